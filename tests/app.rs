//! The editor driven headless through its accessibility tree (egui_kittest): the real app
//! state and worker, on the tiny random-weight model of the parity fixtures.

mod util;

use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use instructdiffusion::app::state::Activity;
use instructdiffusion::app::{EditorApp, Options};
use util::tiny;

fn editor() -> Harness<'static, EditorApp> {
    // Each test keeps its crash-safe session in its own folder (leaked: it outlives the harness).
    let session = Box::leak(Box::new(util::tempdir()));
    editor_with(Some(tiny().join("input.png")), session.path().to_path_buf())
}

fn editor_with(
    image: Option<std::path::PathBuf>,
    session_dir: std::path::PathBuf,
) -> Harness<'static, EditorApp> {
    editor_on(image, session_dir, &tiny().join("diffusers"))
}

fn editor_on(
    image: Option<std::path::PathBuf>,
    session_dir: std::path::PathBuf,
    model: &std::path::Path,
) -> Harness<'static, EditorApp> {
    let options = Options {
        image,
        model: Some(model.display().to_string()),
        session_dir: Some(session_dir),
        prompt: None,
    };
    let mut h = Harness::builder()
        .with_size([1200.0, 800.0])
        .build_eframe(move |cc| EditorApp::new(cc, options));
    wait(&mut h, "the model to load", |a| a.model.is_some());
    h
}

/// Steps the UI until `done` holds (the worker runs on its own thread meanwhile).
fn wait(h: &mut Harness<'static, EditorApp>, what: &str, done: impl Fn(&EditorApp) -> bool) {
    let t0 = Instant::now();
    while !done(h.state()) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}; notice: {:?}",
            h.state().notice
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `prompt` on the open image and waits for its result, the layout settled after (the
/// progress bar goes away).
fn first_edit(h: &mut Harness<'static, EditorApp>, prompt: &str) {
    h.state_mut().prompt = prompt.into();
    h.get_by_label("Run").click();
    wait(h, "the edit", |a| {
        matches!(a.activity, Activity::Idle) && !a.session.history.is_empty()
    });
    h.run_steps(3);
}

fn set_steps(h: &mut Harness<'static, EditorApp>, steps: usize) {
    let s = &mut h.state_mut().settings;
    s.steps = steps;
    s.resolution = 64;
}

#[test]
fn edit_with_live_previews_then_undo_redo() {
    let mut h = editor();
    set_steps(&mut h, 3);
    assert!(
        h.state().session.current().is_some(),
        "the image from the command line is open"
    );
    let role = egui::accesskit::Role::MultilineTextInput;
    h.get_by_role_and_label(role, "Instruction").focus();
    h.step();
    h.get_by_role_and_label(role, "Instruction")
        .type_text("make it snow");
    h.step();
    assert_eq!(h.state().prompt, "make it snow");
    h.get_by_label("Run").click();
    h.step();
    wait(&mut h, "the edit", |a| matches!(a.activity, Activity::Idle));
    h.run_steps(3); // let the layout settle (the progress bar went away)
    let app = h.state();
    assert_eq!(app.previews_received, 3, "one preview per step");
    assert_eq!(app.session.history.len(), 1, "{:?}", app.notice);
    assert_eq!(app.session.history[0].plan.steps, 3);
    let (src, result) = (
        (**app.session.source.as_ref().unwrap()).clone(),
        app.session.current().unwrap().clone(),
    );
    assert_eq!(
        result.dimensions(),
        src.dimensions(),
        "results come back at the input's size"
    );
    assert!(result != src, "the edit changed the image");
    assert_eq!(app.settings.prompt_history[0], "make it snow");

    h.get_by_label("Undo").click();
    h.run_steps(2);
    assert!(
        h.state().session.current().unwrap() == &src,
        "undo shows the source"
    );
    h.get_by_label("Redo").click();
    h.run_steps(2);
    assert!(
        h.state().session.current().unwrap() == &result,
        "redo shows the result"
    );
}

#[test]
fn previews_arrive_and_cancel_stops_within_a_step() {
    let mut h = editor();
    set_steps(&mut h, 200);
    h.state_mut().prompt = "make it snow".into();
    h.get_by_label("Run").click();
    wait(
        &mut h,
        "a preview",
        |a| matches!(a.activity, Activity::Editing { previews, .. } if previews >= 1),
    );
    let step_at_cancel = match h.state().activity {
        Activity::Editing { step, .. } => step,
        _ => unreachable!(),
    };
    h.get_by_label("Cancel").click();
    wait(&mut h, "the cancel", |a| {
        matches!(a.activity, Activity::Idle)
    });
    let app = h.state();
    assert_eq!(app.notice.as_ref().unwrap().text, "cancelled");
    assert!(app.session.history.is_empty());
    assert!(step_at_cancel < 200);
}

#[test]
fn a_bad_model_is_reported_and_the_app_keeps_its_state() {
    let mut h = editor();
    h.state_mut().settings.model = "/nonexistent/model".into();
    h.get_by_label("Load").click();
    wait(&mut h, "the load to fail", |a| {
        matches!(a.activity, Activity::Idle) && a.notice.as_ref().is_some_and(|n| n.error)
    });
    let app = h.state();
    assert!(app.model.is_none());
    assert!(
        app.notice
            .as_ref()
            .unwrap()
            .text
            .contains("/nonexistent/model"),
        "{:?}",
        app.notice
    );
    assert!(app.session.current().is_some(), "the open image survives");

    // A device this build lacks is a clear message too; the status bar shows device and memory.
    h.state_mut().settings.model = tiny().join("diffusers").display().to_string();
    h.state_mut().settings.device = "cuda".into();
    h.get_by_label("Load").click();
    wait(&mut h, "the device error", |a| {
        matches!(a.activity, Activity::Idle)
            && a.notice
                .as_ref()
                .is_some_and(|n| n.error && n.text.contains("cuda"))
    });
    assert!(
        h.state()
            .notice
            .as_ref()
            .unwrap()
            .text
            .contains("--features cuda"),
        "{:?}",
        h.state().notice
    );
    h.state_mut().settings.device = "cpu".into();
    h.get_by_label("Load").click();
    wait(&mut h, "the model on the cpu", |a| a.model.is_some());
    h.run_steps(2);
    assert!(h.query_by_label_contains("device: cpu | memory:").is_some());
}

#[test]
fn mask_instructions_are_decoded_shown_and_exported() {
    let mut h = editor();
    set_steps(&mut h, 2);
    first_edit(&mut h, "Apply a blue semi-transparent mask to the cat");
    let decoded = h.state().session.history[0]
        .decoded
        .clone()
        .expect("a mask instruction is decoded");
    assert_eq!((decoded.width, decoded.height), (64, 64));
    // The overlay controls appear for decoded results and toggle.
    h.get_by_label("Overlays").click();
    h.run_steps(2);
    assert!(!h.state().show_overlays);
    // Export (the buttons open a file dialog, then call this).
    let dir = util::tempdir();
    let out = dir.path().join("coco.json");
    h.state_mut()
        .export_to(instructdiffusion::app::state::ExportKind::Coco, &out);
    assert!(
        !h.state().notice.as_ref().unwrap().error,
        "{:?}",
        h.state().notice
    );
    let coco: instructdiffusion::export::coco::Coco =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(coco.images[0].file_name, "input.png");
    assert_eq!(coco.annotations.len(), decoded.instances.len());
    // An edit instruction has nothing to export, and says so.
    h.state_mut().prompt = "make it snow".into();
    h.get_by_label("Run").click();
    wait(&mut h, "the second edit", |a| {
        matches!(a.activity, Activity::Idle) && a.session.history.len() == 2
    });
    assert!(h.state().session.history[1].decoded.is_none());
    h.state_mut()
        .export_to(instructdiffusion::app::state::ExportKind::Coco, &out);
    assert!(h
        .state()
        .notice
        .as_ref()
        .unwrap()
        .text
        .contains("no masks or keypoints"));
}

fn click(h: &mut Harness<'static, EditorApp>, label: &str) {
    h.get_by_label(label).click();
    h.run_steps(2);
}

/// Chooses a recipe in the task picker's combo box.
fn pick_recipe(h: &mut Harness<'static, EditorApp>, label: &str) {
    click(h, "Task");
    click(h, label);
}

/// The task picker writes a well-formed instruction from its fields and sets the guidance the
/// loaded model recommends for that family (its own table over the official recipe, with the
/// model's guidance rescale).
#[test]
fn the_task_picker_writes_the_instruction_with_the_models_guidance() {
    let dir = util::tempdir();
    let model = dir.path().join("model");
    util::copy_dir(&tiny().join("diffusers"), &model);
    std::fs::write(
        model.join("instructdiffusion.json"),
        r#"{"guidance": "instructdiffusion", "guidance_rescale": 0.6,
            "task_guidance": {"keypoints": [3.0, 0.75]}}"#,
    )
    .unwrap();
    let mut h = editor_on(
        Some(tiny().join("input.png")),
        dir.path().join("session"),
        &model,
    );
    pick_recipe(&mut h, "Keypoints");
    assert_eq!(
        h.state().settings.recipe,
        instructdiffusion::tasks::compose::Recipe::Keypoints
    );
    // An empty target is named, and nothing is overwritten.
    // The rescale is the model's until set; ticking "set" starts from the model's value.
    h.get_by_label("model's: 0.6");
    click(&mut h, "set");
    assert_eq!(h.state().settings.guidance_rescale, Some(0.6));
    h.state_mut().settings.guidance_rescale = Some(0.1);
    h.state_mut().prompt = "my own words".into();
    click(&mut h, "Write instruction");
    assert!(h
        .state()
        .notice
        .as_ref()
        .unwrap()
        .text
        .contains("the target is empty"));
    assert_eq!(h.state().prompt, "my own words");
    let role = egui::accesskit::Role::TextInput;
    h.get_by_role_and_label(role, "Target").focus();
    h.step();
    h.get_by_role_and_label(role, "Target")
        .type_text("man on the left");
    h.run_steps(2);
    h.get_by_label("+ keypoint").click();
    h.run_steps(2);
    click(&mut h, "Write instruction");
    let app = h.state();
    assert_eq!(
        app.prompt,
        "Put a red circle on the nose and a blue circle on the left eye of the man on the left."
    );
    assert_eq!((app.settings.text_cfg, app.settings.image_cfg), (3.0, 0.75));
    assert_eq!(
        app.settings.guidance_rescale, None,
        "the model's own rescale, at which its table was measured"
    );
    // A family the model has no value for takes the official recipe.
    pick_recipe(&mut h, "Segment");
    click(&mut h, "Write instruction");
    let app = h.state();
    assert_eq!(
        app.prompt,
        "Apply a blue semi-transparent mask to the man on the left."
    );
    assert_eq!((app.settings.text_cfg, app.settings.image_cfg), (7.5, 1.5));
}

/// The picker says which phrasing it writes: an InstructPix2Pix folder's free text (this
/// project's sentences read as such); the Phrasing row switches it to InstructDiffusion's
/// structures.
#[test]
fn the_task_picker_writes_the_phrasing_the_model_was_taught() {
    let mut h = editor();
    let shown = |h: &Harness<'static, EditorApp>| {
        h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Phrasing")
            .value()
            .unwrap_or_default()
    };
    assert_eq!(
        shown(&h),
        "as the model was taught: free text (InstructPix2Pix)"
    );
    pick_recipe(&mut h, "Segment");
    h.state_mut().settings.fields.target = "Dining Table".into();
    click(&mut h, "Write instruction");
    assert_eq!(
        h.state().prompt,
        "Apply a blue semi-transparent mask to the Dining Table."
    );
    click(&mut h, "Phrasing");
    click(&mut h, "InstructDiffusion's structures");
    assert_eq!(shown(&h), "InstructDiffusion's structures");
    click(&mut h, "Write instruction");
    assert_eq!(
        h.state().prompt,
        "Mark the pixels of dining table in blue and keep the rest unchanged."
    );
}

/// After an edit the compare slider shows the source left of its divider; a drag on the image
/// moves the divider; C toggles it. Then the result's seed and settings are reused.
#[test]
fn the_compare_slider_follows_a_drag_and_a_result_is_reused() {
    let mut h = editor();
    set_steps(&mut h, 1);
    first_edit(&mut h, "make it snow");
    h.get_by_label("Compare").click();
    h.run_steps(2);
    assert!(h.state().compare);
    let rect = h.state().canvas_rect.expect("the image is drawn");
    let at = egui::pos2(rect.left() + rect.width() * 0.25, rect.center().y);
    h.drag_at(at);
    h.run_steps(1);
    h.drop_at(at);
    h.run_steps(2);
    let split = h.state().compare_split;
    assert!((split - 0.25).abs() < 0.02, "divider at {split}");
    h.key_press(egui::Key::C);
    h.run_steps(2);
    assert!(!h.state().compare, "C toggles the slider");
    // A result's seed and settings are reused from its context menu.
    h.state_mut().prompt.clear();
    h.state_mut().settings.steps = 9;
    h.get_by_label("1: make it snow").click_secondary();
    h.run_steps(2);
    h.get_by_label("Reuse instruction and settings").click();
    h.run_steps(2);
    let app = h.state();
    let plan = &app.session.history[0].plan;
    assert_eq!(app.prompt, "make it snow");
    assert_eq!((app.settings.seed, app.settings.steps), (plan.seed, 1));
    assert_eq!(
        app.settings.seed_mode,
        instructdiffusion::app::state::SeedMode::Fixed
    );
}

#[test]
fn the_session_survives_a_restart() {
    let dir = util::tempdir();
    let mut h = editor_with(Some(tiny().join("input.png")), dir.path().to_path_buf());
    set_steps(&mut h, 1);
    h.state_mut().prompt = "make it snow".into();
    h.get_by_label("Run").click();
    wait(&mut h, "the edit", |a| a.session.history.len() == 1);
    let result = h.state().session.current().unwrap().clone();
    // The session file is written off the UI thread; wait for its index to list the result.
    let t0 = Instant::now();
    while !std::fs::read_to_string(dir.path().join("session.json"))
        .is_ok_and(|s| s.contains("make it snow"))
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "no session file");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(h); // as if the app had been killed
    let h = editor_with(None, dir.path().to_path_buf());
    let app = h.state();
    assert_eq!(app.session.history.len(), 1);
    assert!(
        app.session.current().unwrap() == &result,
        "the result is back"
    );
    assert_eq!(
        app.session.source_path.as_deref(),
        Some(tiny().join("input.png").as_path())
    );
    assert!(
        app.session.unsaved,
        "restored results still count as unsaved"
    );
}

#[test]
fn a_pasted_image_opens() {
    let mut h = editor();
    let img = egui::ColorImage::filled([5, 3], egui::Color32::from_rgb(10, 200, 30));
    h.event(egui::Event::PasteImage(std::sync::Arc::new(img)));
    h.run_steps(2);
    let src = h.state().session.source.as_ref().unwrap();
    assert_eq!(src.dimensions(), (5, 3));
    assert_eq!(src.get_pixel(4, 2).0, [10, 200, 30]);
    assert!(h.state().session.source_path.is_none());
}

#[test]
fn variants_run_with_consecutive_seeds_and_one_is_picked() {
    let mut h = editor();
    set_steps(&mut h, 1);
    {
        let s = &mut h.state_mut().settings;
        s.variants = 3;
        s.seed_mode = instructdiffusion::app::state::SeedMode::Fixed;
        s.seed = 10;
    }
    h.state_mut().prompt = "make it snow".into();
    h.get_by_label("Run").click();
    wait(&mut h, "three variants", |a| {
        a.variants.len() == 3 && matches!(a.activity, Activity::Idle)
    });
    h.run_steps(3);
    let seeds: Vec<u64> = h.state().variants.iter().map(|e| e.plan.seed).collect();
    assert_eq!(seeds, [10, 11, 12]);
    assert!(
        h.state().session.history.is_empty(),
        "variants wait to be picked"
    );
    h.get_by_label("Variant 2 (seed 11)").click();
    h.run_steps(2);
    let app = h.state();
    assert!(app.variants.is_empty());
    assert_eq!(app.session.history.len(), 1);
    assert_eq!(app.session.history[0].plan.seed, 11);
}

#[test]
fn a_brushed_region_limits_the_edit_and_the_rest_stays_exact() {
    let mut h = editor();
    set_steps(&mut h, 1);
    let src = h.state().session.source.clone().unwrap();
    let (w, hh) = (src.width() as usize, src.height() as usize);
    let mut region = vec![false; w * hh];
    instructdiffusion::app::paint_disc(&mut region, w, hh, 20.0, 20.0, 8.0);
    h.state_mut().region = Some(region.clone());
    h.state_mut().prompt = "make it snow".into();
    h.get_by_label("Run").click();
    wait(&mut h, "the edit", |a| a.session.history.len() == 1);
    let out = h.state().session.current().unwrap().clone();
    let mut changed_inside = 0;
    for (i, (o, s)) in out.pixels().zip(src.pixels()).enumerate() {
        if region[i] {
            changed_inside += (o != s) as usize;
        } else {
            assert_eq!(o, s, "pixel {i} outside the region changed");
        }
    }
    assert!(changed_inside > 0, "the region was edited");
}

/// The training panel fine-tunes the loaded model: Start shows a live loss and progress,
/// Stop ends the run after a step with a checkpoint (the button then offers Resume), Resume
/// runs it to the end, and the trained model loads in the editor from the panel.
#[test]
fn training_panel_starts_stops_resumes_and_loads_the_result() {
    use instructdiffusion::app::training::TrainState;
    let mut h = editor();
    let runs = Box::leak(Box::new(util::tempdir()));
    let out = runs.path().join("run");
    h.get_by_label("Training").click();
    h.run_steps(2);
    {
        let t = &mut h.state_mut().training;
        assert!(t.open, "the menu button opens the panel");
        t.out = out.display().to_string();
        t.steps = 400;
        t.batch = 1;
        t.pool = 16;
        t.size = 64;
    }
    h.run_steps(2);
    h.get_by_label("Start").click();
    h.step();
    assert!(h.state().is_busy(), "edits wait while training runs");
    wait(&mut h, "two training steps", |a| {
        a.training.losses.len() >= 2
    });
    assert!(h
        .state()
        .training
        .status()
        .unwrap()
        .starts_with("training: step"));
    h.get_by_label("Stop").click();
    wait(&mut h, "the stop", |a| {
        matches!(a.training.state, TrainState::Finished { stopped: true, .. })
    });
    let stopped_at = h.state().training.losses.last().unwrap()[0] as usize;
    assert!(stopped_at < 400, "stopped early, at step {stopped_at}");
    assert!(out.join("checkpoint/state.json").is_file());

    h.state_mut().training.steps = stopped_at + 2;
    h.run_steps(2);
    h.get_by_label("Resume").click();
    h.step();
    wait(&mut h, "the resumed run", |a| {
        matches!(
            a.training.state,
            TrainState::Finished { stopped: false, .. }
        )
    });
    let steps: Vec<usize> = h
        .state()
        .training
        .losses
        .iter()
        .map(|p| p[0] as usize)
        .collect();
    assert_eq!(
        steps,
        vec![stopped_at + 1, stopped_at + 2],
        "resumed after the stop"
    );
    assert!(
        h.state().training.sheet.is_some(),
        "sample edits at the end"
    );
    h.run_steps(2);
    // The last checkpoint's instruction probe, its three readings, in the panel.
    assert!(h.state().training.instructions.is_some());
    assert!(h
        .query_by_label_contains("a wrong instruction makes the edit's error")
        .is_some());
    assert!(h
        .query_by_label_contains("from pure noise: error")
        .is_some());
    assert!(h.query_by_label_contains("spill from pure noise").is_some());
    h.get_by_label("Load trained model").click();
    h.step();
    wait(&mut h, "the trained model", |a| {
        a.model.as_deref().is_some_and(|m| m.contains("run"))
    });
    assert_eq!(
        h.state().settings.recent_models[0],
        out.join("model").display().to_string()
    );
}

/// A photo larger than the model's picture comes back at its own size; the history item shows
/// the model's own pixels one click away, and the settings' Full resolution reaches the run.
#[test]
fn results_come_back_at_the_photos_size_and_the_models_pixels_one_click_away() {
    let session = Box::leak(Box::new(util::tempdir()));
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/chelsea.png");
    let mut h = editor_with(Some(photo), session.path().to_path_buf());
    set_steps(&mut h, 1);
    first_edit(&mut h, "make it snow");
    let app = h.state();
    assert_eq!(app.session.current().unwrap().dimensions(), (451, 300));
    let entry = &app.session.history[0];
    assert!(matches!(
        entry.applied,
        Some(instructdiffusion::fullres::Applied::Change { .. })
    ));
    assert_eq!(entry.model_image.as_ref().unwrap().dimensions(), (64, 64));
    h.get_by_label("Model's pixels").click();
    h.run_steps(2);
    assert_eq!(h.state().session.current().unwrap().dimensions(), (64, 64));
    h.get_by_label("Model's pixels").click();
    h.run_steps(2);
    assert_eq!(
        h.state().session.current().unwrap().dimensions(),
        (451, 300)
    );

    h.state_mut().settings.full_res = instructdiffusion::fullres::FullRes::Off;
    first_edit(&mut h, "make it snow");
    wait(&mut h, "the second edit", |a| a.session.history.len() == 2);
    let second = &h.state().session.history[1];
    assert_eq!(
        second.plan.full_res,
        instructdiffusion::fullres::FullRes::Off
    );
    assert_eq!(
        second.applied,
        Some(instructdiffusion::fullres::Applied::Resized)
    );
}

/// A folder opens as a project: its images listed with their status, each shown with its
/// draft as overlays; Enter accepts, Delete rejects (saved at once), the arrows move; the COCO
/// export holds the reviewed images with their drafts' masks.
#[test]
fn a_folder_opens_as_a_project_reviewed_from_the_keyboard() {
    use instructdiffusion::decode::{parse::Kind, Decoded, Instance};
    use instructdiffusion::project::{Project, Status};
    let dir = util::tempdir();
    for i in 0..3 {
        image::RgbImage::from_pixel(12, 10, image::Rgb([40 * i, 120, 200]))
            .save(dir.path().join(format!("img{i}.png")))
            .unwrap();
    }
    let draft = |w: usize, h: usize| {
        let mut mask = vec![false; w * h];
        (0..6).for_each(|k| mask[2 * w + 3 + k] = true);
        Decoded {
            kind: Kind::Segmentation,
            width: w,
            height: h,
            instances: vec![Instance {
                category: "dog".into(),
                phrase: "the dog".into(),
                color: [0, 0, 255],
                area: 6,
                bbox: [3.0, 2.0, 6.0, 1.0],
                mask,
                score: 0.8,
            }],
            keypoints: vec![],
            label: None,
        }
    };
    let (mut project, _) = Project::open(dir.path()).unwrap();
    project.set_draft("img0.png", &draft(12, 10)).unwrap();
    project.set_draft("img1.png", &draft(12, 10)).unwrap();

    let session = Box::leak(Box::new(util::tempdir()));
    let mut h = editor_with(Some(dir.path().to_path_buf()), session.path().to_path_buf());
    h.run_steps(2);
    let wb = h
        .state()
        .workbench
        .as_ref()
        .expect("the folder opened as a project");
    assert_eq!(wb.project.state.items.len(), 3);
    assert!(wb.draft.is_some(), "img0's draft is shown");
    wait(&mut h, "the thumbnails of the rows in view", |a| {
        a.workbench.as_ref().unwrap().thumbs.held() == 3
    });
    assert_eq!(
        h.state().session.source_path.as_deref(),
        Some(dir.path().join("img0.png").as_path())
    );
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
    assert_eq!(
        h.state().workbench.as_ref().unwrap().current,
        1,
        "on to the next draft"
    );
    h.key_press(egui::Key::Delete);
    h.run_steps(2);
    h.key_press(egui::Key::ArrowDown);
    h.run_steps(2);
    assert_eq!(h.state().workbench.as_ref().unwrap().current, 2);
    assert_eq!(
        h.state().session.source_path.as_deref(),
        Some(dir.path().join("img2.png").as_path())
    );
    // Saves go through the project's writer thread; wait for them as closing would.
    h.state()
        .workbench
        .as_ref()
        .unwrap()
        .project
        .flush()
        .unwrap();
    let (back, _) = Project::open(dir.path()).unwrap();
    let status: Vec<Status> = back.state.items.iter().map(|i| i.status).collect();
    assert_eq!(status, [Status::Reviewed, Status::Rejected, Status::NotRun]);

    let out = dir.path().join("coco.json");
    h.state_mut().export_project(&out, true);
    let coco: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(coco["images"].as_array().unwrap().len(), 1);
    assert_eq!(coco["images"][0]["file_name"], "img0.png");
    assert_eq!(coco["annotations"][0]["area"].as_f64(), Some(6.0));

    // The reviewed image becomes a training sample for the Training window (LoRA).
    h.state_mut()
        .workbench
        .as_mut()
        .unwrap()
        .project
        .state
        .instruction = Some("Apply a blue semi-transparent mask to the dog.".into());
    let set = dir.path().join("set");
    h.state_mut().project_training_set(&set);
    let app = h.state();
    assert_eq!(app.training.data.as_deref(), Some(set.as_path()));
    assert!(app.training.lora_rank > 0);
    let records = instructdiffusion::data::dataset::read(&set).unwrap();
    assert_eq!(records.len(), 1);
}

/// Down through a folder longer than the list: the current image's row stays in view (the list
/// scrolls with the keyboard), and Up back to the first scrolls back.
#[test]
fn the_list_follows_the_keyboard_through_a_long_folder() {
    let dir = util::tempdir();
    for i in 0..60u8 {
        image::RgbImage::from_pixel(8, 6, image::Rgb([i, 90, 200]))
            .save(dir.path().join(format!("img{i:02}.png")))
            .unwrap();
    }
    let session = Box::leak(Box::new(util::tempdir()));
    let mut h = editor_with(Some(dir.path().to_path_buf()), session.path().to_path_buf());
    h.run_steps(2);
    let view = |h: &Harness<'_, EditorApp>| {
        let wb = h.state().workbench.as_ref().unwrap();
        (wb.current, wb.rows_in_view.clone())
    };
    let (_, first) = view(&h);
    assert!(
        first.start == 0 && first.len() < 40,
        "the list shows a part of the folder: {first:?}"
    );
    // The neighbours are decoded ahead: the first move takes its image from there.
    let t0 = Instant::now();
    while h.state_mut().workbench.as_mut().unwrap().prefetch.held() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "nothing decoded ahead"
        );
        h.run_steps(1);
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..45 {
        h.key_press(egui::Key::ArrowDown);
        h.run_steps(2);
        let (current, rows) = view(&h);
        assert!(
            rows.contains(&current),
            "image {current} out of view {rows:?}"
        );
    }
    assert_eq!(view(&h).0, 45);
    assert!(h.state().workbench.as_ref().unwrap().prefetch.hits >= 1);
    for _ in 0..45 {
        h.key_press(egui::Key::ArrowUp);
        h.run_steps(2);
    }
    let (current, rows) = view(&h);
    assert_eq!(current, 0);
    assert!(rows.contains(&0), "{rows:?}");
}

/// Drafting a folder from the editor: every image drafted in the worker, each saved to the
/// project as it finishes; stopped midway and reopened, the drafted images are kept and
/// "Draft all" does only the rest.
#[test]
fn drafting_a_folder_resumes_after_a_stop() {
    use instructdiffusion::project::{Project, Status};
    let dir = util::tempdir();
    // Ten images: the stop comes after the first draft, long before the tenth.
    for i in 0..10u8 {
        image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([x as u8 * 5, y as u8 * 6, 25 * i])
        })
        .save(dir.path().join(format!("p{i}.png")))
        .unwrap();
    }
    let prompt = "Apply a blue semi-transparent mask to the cat";
    let open = || {
        let session = Box::leak(Box::new(util::tempdir()));
        let mut h = editor_with(Some(dir.path().to_path_buf()), session.path().to_path_buf());
        set_steps(&mut h, 2);
        h.state_mut().prompt = prompt.into();
        h
    };
    let mut h = open();
    h.get_by_label("Draft all").click();
    wait(&mut h, "the first draft", |a| {
        a.workbench.as_ref().unwrap().project.counts()[1] >= 1
    });
    h.state_mut().cancel();
    wait(&mut h, "the stop", |a| matches!(a.activity, Activity::Idle));
    drop(h);
    let (p, _) = Project::open(dir.path()).unwrap();
    let drafted: Vec<String> = p
        .state
        .items
        .iter()
        .filter(|i| i.status == Status::Drafted)
        .map(|i| i.file.clone())
        .collect();
    assert!(!drafted.is_empty() && drafted.len() < 10, "{drafted:?}");
    let first = p.state.items[0].answer.clone();

    let mut h = open();
    assert_eq!(h.state().undrafted().len(), 10 - drafted.len());
    h.get_by_label("Draft all").click();
    wait(&mut h, "the rest of the drafts", |a| {
        matches!(a.activity, Activity::Idle) && a.undrafted().is_empty()
    });
    let (p, _) = Project::open(dir.path()).unwrap();
    assert_eq!(p.counts(), [0, 10, 0, 0]);
    assert_eq!(p.state.items[0].answer, first, "a kept draft is not redone");
    assert_eq!(p.state.instruction.as_deref(), Some(prompt));
}

/// Corrections on a draft: the brush adds to the mask, a keypoint is dragged, Ctrl+Z takes a
/// correction back and Ctrl+Shift+Z does it again; accepted and exported, the COCO file holds
/// the corrected mask and point.
#[test]
fn a_draft_is_corrected_with_the_brush_and_a_dragged_point() {
    use instructdiffusion::app::workbench::Tool;
    use instructdiffusion::decode::{parse::Kind, Decoded, Instance, Point};
    use instructdiffusion::project::Project;
    let dir = util::tempdir();
    image::RgbImage::from_pixel(40, 30, image::Rgb([30, 160, 90]))
        .save(dir.path().join("one.png"))
        .unwrap();
    let (w, hgt) = (40usize, 30usize);
    let mut mask = vec![false; w * hgt];
    (0..4).for_each(|k| mask[5 * w + 5 + k] = true);
    let draft = Decoded {
        kind: Kind::Keypoints,
        width: w,
        height: hgt,
        instances: vec![Instance {
            category: "dog".into(),
            phrase: "the dog".into(),
            color: [0, 0, 255],
            area: 4,
            bbox: [5.0, 5.0, 4.0, 1.0],
            mask,
            score: 0.8,
        }],
        keypoints: vec![Point {
            category: "person".into(),
            name: "nose".into(),
            color: [255, 0, 0],
            x: 30.5,
            y: 20.5,
            radius: 2.0,
            score: 0.9,
            instance: 0,
        }],
        label: None,
    };
    let (mut project, _) = Project::open(dir.path()).unwrap();
    project.set_draft("one.png", &draft).unwrap();

    let session = Box::leak(Box::new(util::tempdir()));
    let mut h = editor_with(Some(dir.path().to_path_buf()), session.path().to_path_buf());
    h.run_steps(3);
    let rect = h.state().canvas_rect.expect("the image is drawn");
    let scale = rect.width() / w as f32;
    let screen = |x: f32, y: f32| rect.min + egui::vec2(x, y) * scale;
    // Paint a disc of radius 3 around (20, 15).
    {
        let wb = h.state_mut().workbench.as_mut().unwrap();
        wb.tool = Tool::Add;
        wb.radius = 3.0;
    }
    h.drag_at(screen(20.0, 15.0));
    h.run_steps(1);
    h.drop_at(screen(20.0, 15.0));
    h.run_steps(2);
    let area = |h: &Harness<'static, EditorApp>| {
        h.state()
            .workbench
            .as_ref()
            .unwrap()
            .draft
            .as_ref()
            .unwrap()
            .instances[0]
            .area
    };
    assert!(area(&h) > 20, "painted: {}", area(&h));
    // Drag the nose from (30.5, 20.5) to (10, 25).
    h.state_mut().workbench.as_mut().unwrap().tool = Tool::Points;
    h.drag_at(screen(30.5, 20.5));
    h.run_steps(1);
    h.hover_at(screen(10.0, 25.0));
    h.run_steps(1);
    h.drop_at(screen(10.0, 25.0));
    h.run_steps(2);
    let nose = |h: &Harness<'static, EditorApp>| {
        let p = &h
            .state()
            .workbench
            .as_ref()
            .unwrap()
            .draft
            .as_ref()
            .unwrap()
            .keypoints[0];
        (p.x, p.y)
    };
    let (x, y) = nose(&h);
    assert!(
        (x - 10.0).abs() < 1.0 && (y - 25.0).abs() < 1.0,
        "nose at ({x}, {y})"
    );
    // Undo the move, redo it.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    h.run_steps(2);
    assert_eq!(nose(&h), (30.5, 20.5));
    h.key_press_modifiers(
        egui::Modifiers::COMMAND | egui::Modifiers::SHIFT,
        egui::Key::Z,
    );
    h.run_steps(2);
    assert!((nose(&h).0 - 10.0).abs() < 1.0);
    // A missing keypoint, added by a click where there is none.
    h.state_mut().workbench.as_mut().unwrap().new_point = "left_wrist".into();
    let at = screen(5.0, 25.0);
    h.hover_at(at);
    h.run_steps(1);
    h.drag_at(at);
    h.run_steps(1);
    h.drop_at(at);
    h.run_steps(2);
    let points = h
        .state()
        .workbench
        .as_ref()
        .unwrap()
        .draft
        .as_ref()
        .unwrap()
        .keypoints
        .clone();
    assert_eq!(points.len(), 2, "{points:?}");
    assert_eq!(points[1].name, "left_wrist");
    assert!((points[1].x - 5.0).abs() < 1.0 && (points[1].y - 25.0).abs() < 1.0);
    let painted = area(&h);
    let on_screen = h
        .state()
        .workbench
        .as_ref()
        .unwrap()
        .draft
        .as_ref()
        .unwrap()
        .instances[0]
        .mask
        .clone();
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
    let out = dir.path().join("coco.json");
    h.state_mut().export_project(&out, true);
    let coco: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let anns = coco["annotations"].as_array().unwrap();
    let mask_ann = anns.iter().find(|a| a["segmentation"].is_object()).unwrap();
    assert_eq!(mask_ann["area"].as_f64(), Some(painted as f64));
    // The exported mask is the one on screen, pixel for pixel.
    let counts = mask_ann["segmentation"]["counts"].as_str().unwrap();
    let exported = instructdiffusion::export::rle::Rle::from_coco_string(counts, w, hgt)
        .unwrap()
        .decode();
    assert!(
        exported == on_screen,
        "the exported mask differs from the corrected one"
    );
    let kp = anns.iter().find(|a| a["keypoints"].is_array()).unwrap();
    let xs: Vec<f64> = serde_json::from_value(kp["keypoints"].clone()).unwrap();
    assert!(
        xs.chunks(3)
            .any(|k| k[2] > 0.0 && (k[0] - 10.0).abs() < 1.0 && (k[1] - 25.0).abs() < 1.0),
        "{xs:?}"
    );
    h.state()
        .workbench
        .as_ref()
        .unwrap()
        .project
        .flush()
        .unwrap();
    let (back, _) = Project::open(dir.path()).unwrap();
    assert!(back.state.items[0].corrected);
}
