/// The system allocator, which also frees weights that are views of their files
/// (`model::load::mapped`: loading SD 1.5 without copying it).
#[global_allocator]
static ALLOCATOR: instructdiffusion::model::load::mapped::Allocator =
    instructdiffusion::model::load::mapped::Allocator;

fn main() -> std::process::ExitCode {
    tune_allocator();
    instructdiffusion::support::unify_thread_counts();
    instructdiffusion::cli::main()
}

/// glibc's allocator, left at its defaults, hands the large activation buffers of every
/// network pass back to the kernel and faults them in again: on the measuring machine that was
/// 40-50% of the time of a training step (perf: `clear_page_erms`). Keep freed memory for
/// reuse instead (the same as `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...` at launch).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
