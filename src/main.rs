// glibc's allocator hands the large activation buffers of every UNet step back to the kernel
// and faults them in again (a third of a step's time on the measuring machine); mimalloc keeps
// and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    instructdiffusion::cli::main()
}
