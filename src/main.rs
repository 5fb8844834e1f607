fn main() -> std::process::ExitCode {
    instructdiffusion::cli::main()
}
