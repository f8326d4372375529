//! `lodge bench` (placeholder replaced below).
use clap::Args;
#[derive(Args, Debug)]
pub struct BenchArgs {}
pub async fn run(_a: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench: not yet built")
}
