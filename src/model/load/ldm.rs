//! Single-file checkpoints in the original LDM layout (InstructDiffusion's release format,
//! InstructPix2Pix and MagicBrush too): the key remap to diffusers names, as tables and small
//! pure functions, and the split of one file into the three networks' stores.
//!
//! Mapping facts: diffusers/scripts/convert_original_stable_diffusion_to_diffusers.py and
//! `../shared/reference/NOTES.md`.

use std::path::Path;
use std::sync::Arc;

use super::store::{TensorStore, WeightsFile};
use super::LoadError;

/// Where each network lives inside an LDM checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// InstructPix2Pix-style EMA copies: `model_ema.` + the UNet key with its dots removed.
pub const EMA_PREFIX: &str = "model_ema.";

/// Renames inside an LDM `ResBlock` (UNet).
const UNET_RESNET: &[(&str, &str)] = &[
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
];

/// Renames inside the VAE's mid attention (1x1 conv weights become linear weights).
const VAE_ATTENTION: &[(&str, &str)] = &[
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
];

fn rename(rest: &str, table: &[(&str, &str)]) -> Option<String> {
    table
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{to}{r}")))
}

/// Splits `"3.1.rest"` into `(3, 1, "rest")`.
fn two_indices(s: &str) -> Option<(usize, usize, &str)> {
    let (i, s) = s.split_once('.')?;
    let (j, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, j.parse().ok()?, rest))
}

/// Maps one LDM UNet key (without `model.diffusion_model.`) to its diffusers name.
/// `layers_per_block` is 2 for SD; input blocks hold `layers` resnets plus a downsampler, output
/// blocks `layers + 1` resnets.
pub fn unet_key(key: &str, layers_per_block: usize) -> Option<String> {
    let per = layers_per_block + 1;
    let fixed: &[(&str, &str)] = &[
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    if let Some(k) = rename(key, fixed) {
        return Some(k);
    }
    if let Some(s) = key.strip_prefix("input_blocks.") {
        let (i, j, rest) = two_indices(s)?;
        let (b, l) = ((i - 1) / per, (i - 1) % per);
        return match (l == layers_per_block, j) {
            (true, 0) => rest
                .strip_prefix("op.")
                .map(|r| format!("down_blocks.{b}.downsamplers.0.conv.{r}")),
            (false, 0) => {
                rename(rest, UNET_RESNET).map(|r| format!("down_blocks.{b}.resnets.{l}.{r}"))
            }
            (false, 1) => Some(format!("down_blocks.{b}.attentions.{l}.{rest}")),
            _ => None,
        };
    }
    if let Some(s) = key.strip_prefix("middle_block.") {
        let (j, rest) = s.split_once('.')?;
        return match j {
            "0" => rename(rest, UNET_RESNET).map(|r| format!("mid_block.resnets.0.{r}")),
            "1" => Some(format!("mid_block.attentions.0.{rest}")),
            "2" => rename(rest, UNET_RESNET).map(|r| format!("mid_block.resnets.1.{r}")),
            _ => None,
        };
    }
    if let Some(s) = key.strip_prefix("output_blocks.") {
        let (i, j, rest) = two_indices(s)?;
        let (b, l) = (i / per, i % per);
        return match j {
            0 => rename(rest, UNET_RESNET).map(|r| format!("up_blocks.{b}.resnets.{l}.{r}")),
            // The upsampler is the last module: `.1.conv` without attention, `.2.conv` with.
            1 | 2 if rest.starts_with("conv.") => {
                Some(format!("up_blocks.{b}.upsamplers.0.{rest}"))
            }
            1 => Some(format!("up_blocks.{b}.attentions.{l}.{rest}")),
            _ => None,
        };
    }
    None
}

/// Maps one LDM VAE key (without `first_stage_model.`) to its diffusers name; `blocks` is the
/// number of resolution levels (4 for SD), needed because LDM numbers decoder levels bottom-up.
pub fn vae_key(key: &str, blocks: usize) -> Option<String> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some(key.to_string());
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let resnet = |r: &str| {
        r.strip_prefix("nin_shortcut.")
            .map(|x| format!("conv_shortcut.{x}"))
            .unwrap_or_else(|| r.to_string())
    };
    let mapped = if let Some(r) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{r}")
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else if let Some(r) = rest.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{}", resnet(r))
    } else if let Some(r) = rest.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{}", resnet(r))
    } else if let Some(r) = rest.strip_prefix("mid.attn_1.") {
        format!("mid_block.attentions.0.{}", rename(r, VAE_ATTENTION)?)
    } else if let Some(s) = rest.strip_prefix("down.") {
        let (i, s) = s.split_once('.')?;
        if let Some(r) = s.strip_prefix("downsample.conv.") {
            format!("down_blocks.{i}.downsamplers.0.conv.{r}")
        } else {
            let (j, r) = s.strip_prefix("block.")?.split_once('.')?;
            format!("down_blocks.{i}.resnets.{j}.{}", resnet(r))
        }
    } else if let Some(s) = rest.strip_prefix("up.") {
        let (k, s) = s.split_once('.')?;
        let b = blocks
            .checked_sub(1)?
            .checked_sub(k.parse::<usize>().ok()?)?;
        if let Some(r) = s.strip_prefix("upsample.conv.") {
            format!("up_blocks.{b}.upsamplers.0.conv.{r}")
        } else {
            let (j, r) = s.strip_prefix("block.")?.split_once('.')?;
            format!("up_blocks.{b}.resnets.{j}.{}", resnet(r))
        }
    } else {
        return None;
    };
    Some(format!("{side}.{mapped}"))
}

/// The EMA twin of a UNet key, as InstructPix2Pix's `LitEma` names it.
pub fn ema_key(unet_key: &str) -> String {
    format!("{EMA_PREFIX}diffusion_model{}", unet_key.replace('.', ""))
}

/// The three stores of one single-file checkpoint, plus what the file revealed.
pub struct Split {
    pub unet: TensorStore,
    pub vae: TensorStore,
    pub clip: TensorStore,
    /// The UNet's input channels, read from `conv_in`'s weight shape when present.
    pub unet_in_channels: Option<usize>,
    pub used_ema: bool,
    pub unmapped: Vec<String>,
}

/// Splits an LDM checkpoint into diffusers-named stores. `layers_per_block` and `vae_blocks`
/// come from the configs in use (SD 1.5: 2 and 4).
pub fn split(
    path: &Path,
    file: WeightsFile,
    layers_per_block: usize,
    vae_blocks: usize,
) -> Result<Split, LoadError> {
    let names = file.names();
    let has = |k: &str| names.iter().any(|n| n == k);
    let unet_in_channels = file
        .shape(&format!("{UNET_PREFIX}input_blocks.0.0.weight"))
        .and_then(|s| s.get(1).copied());
    if !names.iter().any(|n| n.starts_with(UNET_PREFIX)) {
        let sample: Vec<&String> = names.iter().take(3).collect();
        return Err(LoadError::Weights {
            path: path.to_path_buf(),
            msg: format!(
                "no '{UNET_PREFIX}*' tensors: not an LDM checkpoint (first keys: {sample:?}); \
                 a diffusers model is a folder with unet/, vae/ and text_encoder/"
            ),
        });
    }
    if names
        .iter()
        .any(|n| n.starts_with("cond_stage_model.model."))
    {
        return Err(LoadError::Weights {
            path: path.to_path_buf(),
            msg: "this checkpoint uses an OpenCLIP text encoder (SD 2.x), which is not supported"
                .into(),
        });
    }
    let file = Arc::new(file);
    let mut unet = TensorStore::new("unet");
    let mut vae = TensorStore::new("vae");
    let mut clip = TensorStore::new("text encoder");
    let (us, vs, cs) = (
        unet.add_shared(path, file.clone()),
        vae.add_shared(path, file.clone()),
        clip.add_shared(path, file.clone()),
    );
    let mut used_ema = false;
    let mut unmapped = Vec::new();
    for name in &names {
        if let Some(k) = name.strip_prefix(UNET_PREFIX) {
            match unet_key(k, layers_per_block) {
                Some(d) => {
                    let ema = ema_key(k);
                    let stored = if has(&ema) {
                        used_ema = true;
                        ema
                    } else {
                        name.clone()
                    };
                    unet.insert(d, us, stored);
                }
                None => unmapped.push(name.clone()),
            }
        } else if let Some(k) = name.strip_prefix(VAE_PREFIX) {
            match vae_key(k, vae_blocks) {
                Some(d) => vae.insert(d, vs, name.clone()),
                None => unmapped.push(name.clone()),
            }
        } else if let Some(k) = name.strip_prefix(CLIP_PREFIX) {
            // transformers >= 5 drops the `text_model.` level; the encoder always asks for it.
            let d = if k.starts_with("text_model.") {
                k.to_string()
            } else {
                format!("text_model.{k}")
            };
            clip.insert(d, cs, name.clone());
        }
    }
    Ok(Split {
        unet,
        vae,
        clip,
        unet_in_channels,
        used_ema,
        unmapped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_keys_follow_the_diffusers_converter() {
        let cases = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.bias",
                "down_blocks.1.resnets.0.conv_shortcut.bias",
            ),
            (
                "input_blocks.11.0.out_layers.3.weight",
                "down_blocks.3.resnets.1.conv2.weight",
            ),
            (
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "middle_block.2.emb_layers.1.weight",
                "mid_block.resnets.1.time_emb_proj.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.11.0.in_layers.2.weight",
                "up_blocks.3.resnets.2.conv1.weight",
            ),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(unet_key(ldm, 2).as_deref(), Some(diffusers), "{ldm}");
        }
        assert_eq!(unet_key("input_blocks.3.1.foo", 2), None);
        assert_eq!(unet_key("betas", 2), None);
    }

    #[test]
    fn vae_keys_reverse_decoder_levels() {
        let cases = [
            (
                "encoder.down.0.block.1.conv2.weight",
                "encoder.down_blocks.0.resnets.1.conv2.weight",
            ),
            (
                "encoder.down.2.downsample.conv.bias",
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
            ),
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.mid.attn_1.q.weight",
                "encoder.mid_block.attentions.0.to_q.weight",
            ),
            (
                "encoder.mid.attn_1.proj_out.bias",
                "encoder.mid_block.attentions.0.to_out.0.bias",
            ),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            (
                "decoder.up.3.block.0.norm1.weight",
                "decoder.up_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "decoder.up.0.block.2.conv1.bias",
                "decoder.up_blocks.3.resnets.2.conv1.bias",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.block_2.norm2.bias",
                "decoder.mid_block.resnets.1.norm2.bias",
            ),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(vae_key(ldm, 4).as_deref(), Some(diffusers), "{ldm}");
        }
        assert_eq!(vae_key("loss.logvar", 4), None);
    }

    #[test]
    fn ema_names_drop_dots() {
        assert_eq!(
            ema_key("input_blocks.0.0.weight"),
            "model_ema.diffusion_modelinput_blocks00weight"
        );
    }
}
