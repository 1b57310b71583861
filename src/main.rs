//! The `arbiter` binary: parse arguments, then hand over to the library's CLI.

fn main() -> std::process::ExitCode {
    arbiter::cli::main()
}
