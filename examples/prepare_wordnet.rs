//! Rebuilds the embedded WordNet task in `examples/data/wordnet` from
//! WordNet 3.0's data files (Debian: `apt-get install wordnet-base`).
//!
//!     cargo run --release --example prepare_wordnet -- --wordnet /usr/share/wordnet

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use gradcache::data::wordnet::{Split, WordSenseData};

#[derive(Parser, Debug)]
struct Args {
    /// Folder with data.noun, data.verb, data.adj, data.adv.
    #[arg(long, default_value = "/usr/share/wordnet")]
    wordnet: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "examples/data/wordnet")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let data = WordSenseData::from_wordnet(&args.wordnet)
        .with_context(|| format!("reading WordNet from {} (apt-get install wordnet-base)", args.wordnet.display()))?;
    data.write(&args.out)?;
    // WordNet's license travels with the data: it is the header of each data file.
    let header = std::fs::read_to_string(args.wordnet.join("data.noun"))?;
    let license: String = header
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim_start().split_once(' ').map_or("", |(_, rest)| rest).to_string() + "\n")
        .collect();
    std::fs::write(args.out.join("LICENSE-WordNet.txt"), license)?;
    for split in [Split::Train, Split::Dev, Split::Test] {
        println!("{split:?}: {} usage examples", data.examples(split).count());
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
