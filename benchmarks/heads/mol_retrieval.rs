//! Retrieval with a Mixture of Logits head itself (#34): exact search (the
//! head over every document) against the two component searches
//! (`head-union`, `head-mean`, each rescored exactly by the head), their
//! time and their recall@k of the exact top k.
//!
//! On a BEIR set, queries and corpus are encoded once and every method
//! searches the same representations (the encoding time is reported
//! apart). With `--synthetic N`, the index is N random pooled vectors of
//! the model's width (no encoder runs): time and peak memory of one method
//! per process, for corpus sizes no text set here has.
//!
//!     cargo run --release --example heads_mol_retrieval -- --model RUN/model --data wordnet-beir/dev --split dev
//!     cargo run --release --example heads_mol_retrieval -- --model RUN/model --synthetic 1000000 --method head-mean
//!
//! One JSON line per method on stdout; `benchmarks/heads/mol_retrieval.sh` runs
//! the grid and writes docs/results/mol_retrieval.md.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use gradcache::app::data::beir::read_beir;
use gradcache::app::data::Malformed;
use gradcache::app::retrieval::{rerank_encoded, Encoded, FirstStage, Ranked, Searcher};
use gradcache::runtime::peak_resident_mb;
use gradcache::{Representation, Scorer};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    /// A model bundle with a Mixture of Logits head.
    #[arg(long)]
    model: PathBuf,
    /// A BEIR folder.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "dev")]
    split: String,
    /// A synthetic index of this many random pooled vectors instead.
    #[arg(long)]
    synthetic: Option<usize>,
    /// With --synthetic: the one method this process runs.
    #[arg(long, default_value = "head")]
    method: String,
    /// Queries of the synthetic index.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    #[arg(long, default_value_t = 100)]
    k: usize,
    /// Documents per search block.
    #[arg(long, default_value_t = 1024)]
    block: usize,
    #[arg(long, default_value = "auto")]
    precision: String,
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

/// Searches `corpus` block by block `how`; the component searches'
/// candidates are rescored exactly by the head and cut to `k`. Also the
/// seconds of the search alone (before rescoring) and the mean candidates
/// per query it handed to the rescoring.
fn search(
    scorer: &Scorer,
    queries: &Representation,
    corpus: &Representation,
    k: usize,
    block: usize,
    how: FirstStage,
) -> Result<(Vec<Ranked>, f64, f64)> {
    let started = Instant::now();
    let mut s = Searcher::new(scorer, queries, k, how)?;
    let n = corpus.len();
    for start in (0..n).step_by(block) {
        s.push(&corpus.narrow(start, block.min(n - start))?)?;
    }
    let found = s.finish()?;
    let searched = started.elapsed().as_secs_f64();
    let candidates = found.iter().map(Vec::len).sum::<usize>() as f64 / found.len().max(1) as f64;
    if how == FirstStage::Head {
        return Ok((found, searched, candidates));
    }
    let encoded = Encoded { queries: queries.narrow(0, queries.len())?, corpus: corpus.narrow(0, n)? };
    let rescored = rerank_encoded(scorer, &encoded, &found, &mut |_, _, _| ())?;
    let cut = rescored.into_iter().map(|mut r| {
        r.truncate(k);
        r
    });
    Ok((cut.collect(), searched, candidates))
}

/// Mean over queries of the share of the exact top k that `found` holds.
fn recall(found: &[Ranked], exact: &[Ranked]) -> f64 {
    let per: Vec<f64> = found
        .iter()
        .zip(exact)
        .map(|(f, e)| {
            let f: HashSet<usize> = f.iter().map(|&(d, _)| d).collect();
            e.iter().filter(|(d, _)| f.contains(d)).count() as f64 / e.len().max(1) as f64
        })
        .collect();
    per.iter().sum::<f64>() / per.len().max(1) as f64
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let precision = args.precision.parse::<gradcache::runtime::precision::Precision>()?.resolve(Device::Cpu).chosen;
    let scorer = Scorer::load(&args.model, Device::Cpu)?.with_precision(precision)?;
    let methods = [FirstStage::Head, FirstStage::HeadUnion, FirstStage::HeadMean];
    if let Some(n) = args.synthetic {
        let d = scorer.config().head.dim().unwrap_or(384) as i64;
        tch::manual_seed(0);
        let queries = Representation::vector(Tensor::randn([args.queries as i64, d], (Kind::Float, Device::Cpu)))?;
        let corpus = Representation::vector(Tensor::randn([n as i64, d], (Kind::Float, Device::Cpu)))?;
        let how: FirstStage = args.method.parse()?;
        let before = peak_resident_mb()?;
        let started = Instant::now();
        let (found, searched, _) = search(&scorer, &queries, &corpus, args.k, args.block, how)?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"set": "synthetic", "passages": n, "queries": args.queries, "k": args.k, "method": how.name(), "precision": precision.name(),
                "seconds": seconds, "search_seconds": searched, "peak_mb": peak_resident_mb()?, "before_search_mb": before, "found": found.len()})
        );
        return Ok(());
    }
    let Some(data) = &args.data else { anyhow::bail!("give --data BEIR_DIR or --synthetic N") };
    let (set, _) = read_beir(data, &args.split, Malformed::Fail)?;
    let texts: Vec<&str> = set.corpus.iter().map(|(_, t)| t.as_str()).collect();
    let query_texts: Vec<&str> = set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let started = Instant::now();
    let queries = scorer.encode_queries(&query_texts)?;
    let corpus = scorer.encode_many(&texts, gradcache::core::layout::Side::Passages, &mut |_, _| ())?;
    let encoding = started.elapsed().as_secs_f64();
    let k = args.k.min(texts.len());
    let mut exact = None;
    for how in methods {
        let started = Instant::now();
        let (found, searched, candidates) = search(&scorer, &queries, &corpus, k, args.block, how)?;
        let seconds = started.elapsed().as_secs_f64();
        let exact = exact.get_or_insert_with(|| found.clone());
        let rescored = (how != FirstStage::Head).then_some(candidates);
        println!(
            "{}",
            serde_json::json!({"set": data.display().to_string(), "split": args.split, "passages": texts.len(), "queries": queries.len(), "k": k,
                "method": how.name(), "precision": precision.name(), "seconds": seconds, "search_seconds": searched, "encoding_seconds": encoding,
                "recall_of_exact": recall(&found, exact), "candidates_rescored": rescored})
        );
    }
    Ok(())
}
