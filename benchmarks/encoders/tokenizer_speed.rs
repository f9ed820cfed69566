//! Tokens per second of the two tokenizer paths on the main job's texts:
//! MiniLM's `tokenizer.json` through Hugging Face `tokenizers` (what
//! gradcache uses since it reads `tokenizer.json`) against its `vocab.txt`
//! through rust_tokenizers (what it used before), both batch-encoding in
//! parallel on the same threads, rounds interleaved.
//!
//! `cargo run --release --example encoders_tokenizer_speed [ROUNDS]`

use std::time::Instant;

use gradcache::models::pretrained::{ModelDir, EMBEDDED_MODEL_DIR};
use gradcache::models::text::TextTokenizer;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map(|r| r.parse()).transpose()?.unwrap_or(5);
    let task = gradcache::app::data::wordnet::WordSenseData::read(std::path::Path::new(gradcache::app::data::wordnet::EMBEDDED_TASK_DIR))?;
    let texts: Vec<String> =
        task.training_records().into_iter().flat_map(|r| std::iter::once(r.query).chain(r.positives).chain(r.negatives)).collect();
    let model = ModelDir::open(EMBEDDED_MODEL_DIR)?;
    let json = TextTokenizer::from_tokenizer_json(&model.root().join("tokenizer.json"), 48)?;
    let vocab = TextTokenizer::from_vocab(&model.root().join("vocab.txt"), true, 48)?;
    // The same ids from both, or the comparison means nothing.
    let (a, b) = (json.encode(&texts[..2000])?, vocab.encode(&texts[..2000])?);
    anyhow::ensure!(a.ids() == b.ids(), "the two tokenizers disagree on the main job's texts");
    println!("{} texts (queries and passages of the main job's training records), {} threads", texts.len(), tch::get_num_threads());
    println!("{:<28} {:>12} {:>14}", "round / tokenizer", "seconds", "tokens/s");
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, (name, tok)) in [("tokenizer.json (tokenizers)", &json), ("vocab.txt (rust_tokenizers)", &vocab)].into_iter().enumerate() {
            let started = Instant::now();
            let batch = tok.encode(&texts)?;
            let seconds = started.elapsed().as_secs_f64();
            let tokens = batch.mask().sum(tch::Kind::Int64).int64_value(&[]) as f64;
            rates[i].push(tokens / seconds);
            println!("{round} {name:<26} {seconds:>12.3} {:>14.0}", tokens / seconds);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (j, v) = (median(&mut rates[0]), median(&mut rates[1]));
    println!("median tokens/s: tokenizers {j:.0}, rust_tokenizers {v:.0}; ratio {:.2}x", j / v);
    Ok(())
}
