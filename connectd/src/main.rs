use connectd::Builtin;
use connector_core::Registry;

fn main() -> std::process::ExitCode {
    connectd::cli::main(Registry::builtin())
}
