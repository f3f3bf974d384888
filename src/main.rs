use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    walhook::cli::main().await
}
