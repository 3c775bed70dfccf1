//! `trigger-messaging`: the command-line entry point.

fn main() -> std::process::ExitCode {
    messaging_provider::cli::main()
}
