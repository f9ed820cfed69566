//! The `gradcache` command-line tool.
//!
//!     gradcache train --steps 100                 # the main job; writes runs/train_reranker/model
//!     gradcache eval --model runs/train_reranker/model --data wordnet-beir/dev --split dev
//!     gradcache rerank --model runs/train_reranker/model --input requests.jsonl
//!     gradcache serve --model runs/train_reranker/model --port 3000  # TEI's HTTP API
//!     gradcache check-head --head interaction      # is this head exact under the two-cache step?
//!     gradcache prepare-wordnet                    # rebuild examples/data/wordnet from WordNet 3.0
//!     gradcache prepare-wordnet --beir wordnet-beir  # its dev and test splits as BEIR folders

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gradcache::app::data::beir::{read_beir, write_beir};
use gradcache::app::data::rerank::read_rerank_requests;
use gradcache::app::data::texts::read_texts;
use gradcache::app::data::wordnet::{Split, WordSenseData};
use gradcache::app::data::Malformed;
use gradcache::app::export::ExportFormat;
use gradcache::app::recipe;
use gradcache::app::retrieval::{evaluate_retrieval, write_trec_run, FirstStage};
use gradcache::cli::console::stderr_progress;
use gradcache::cli::{check_sample_head, RunArgs, ServeArgs, TrainArgs};
use gradcache::error::Side;
use gradcache::models::heads::HeadConfig;
use gradcache::models::weights::encode_safetensors;
use gradcache::models::weights::write_bytes_atomically;
use gradcache::Representation;
use gradcache::Scorer;

#[derive(Parser)]
#[command(name = "gradcache", about = "Two-cache Gradient Cache tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model with the two-cache step (the recipe of
    /// examples/train_reranker): writes OUTPUT/model, a bundle for
    /// `eval` and `rerank`.
    Train(TrainArgs),
    /// Check a built-in head, or one from a JSON head config, against the
    /// full-batch step: replay, coupling between pairs, and every gradient.
    CheckHead {
        /// A head kind (dot, cosine, bilinear, mlp, max_sim, weighted_max_sim, poly, interaction).
        #[arg(long, conflicts_with = "config")]
        head: Option<String>,
        /// A JSON head config, e.g. {"kind": "interaction", "dim": 16, "heads": 2, "ffn": 32, "dropout": 0.1}.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Representation width of the sample encoder (and of a named head).
        #[arg(long, default_value_t = 16)]
        dim: usize,
        /// Dropout of the sample encoder and of a named head.
        #[arg(long, default_value_t = 0.1)]
        dropout: f64,
        /// Queries in the sample batch; each has `group` passages.
        #[arg(long, default_value_t = 6)]
        queries: usize,
        #[arg(long, default_value_t = 3)]
        group: usize,
        /// Run in f32 (tolerance 1e-6 + 2e-6 relative) instead of f64 (1e-13 + 1e-12).
        #[arg(long)]
        f32: bool,
    },
    /// Rebuild the WordNet task from WordNet 3.0's data files
    /// (Debian: apt-get install wordnet-base); with --beir, write the
    /// prepared task's dev and test evaluation sets as BEIR folders instead.
    PrepareWordnet {
        #[arg(long, default_value = "/usr/share/wordnet")]
        wordnet: PathBuf,
        /// The prepared task (written, or read with --beir).
        #[arg(long, default_value = gradcache::app::data::wordnet::EMBEDDED_TASK_DIR)]
        out: PathBuf,
        /// Write OUT/dev and OUT/test as BEIR folders (corpus.jsonl,
        /// queries.jsonl, qrels/{dev,test}.tsv): the sets the training run
        /// evaluates.
        #[arg(long)]
        beir: Option<PathBuf>,
        /// Queries per split in the BEIR folders (the training run's
        /// default dev_queries is 300).
        #[arg(long, default_value_t = 300)]
        queries: usize,
    },
    /// Evaluate a model bundle on a BEIR folder: the first stage (the
    /// encoders' cosine over the whole corpus, streaming top-k) and the
    /// head's reranking of each query's top k, side by side; writes
    /// metrics.json and run.trec.
    Eval {
        /// A model bundle (e.g. runs/train_reranker/model), or a pretrained
        /// model folder (its encoder with the cosine head: the baseline).
        #[arg(long)]
        model: PathBuf,
        /// A BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Candidates per query passed from the first stage to the head
        /// (with the head as first stage: documents ranked per query, and
        /// candidates per query component for head-union).
        #[arg(long, default_value_t = 100)]
        retrieve_k: usize,
        /// What ranks the corpus first: cosine (the encoders' pooled
        /// vectors; the head reranks the top k), head (the head over every
        /// document, exact), head-union or head-mean (a Mixture of Logits
        /// head's component search, rescored by the head: docs/inference.md).
        #[arg(long, default_value = "cosine", value_parser = parse_first_stage)]
        first_stage: FirstStage,
        /// Longest tokenized text, for a model folder (a bundle has its own).
        #[arg(long, default_value_t = 128)]
        max_len: usize,
        /// Where metrics.json and run.trec go (default: eval/<data folder>-<split>).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Skip malformed lines of the data (counted) instead of stopping.
        #[arg(long)]
        skip_malformed: bool,
        #[command(flatten)]
        run: RunArgs,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Draw a run's training loss and a dev metric against the step into a
    /// PNG (from RUN/metrics.jsonl; TensorBoard reads RUN/tensorboard/).
    Plot {
        /// A run folder (--output-dir of `gradcache train`).
        run: PathBuf,
        /// The image (default RUN/plot.png).
        #[arg(long)]
        output: Option<PathBuf>,
        /// The dev metric (default: the run's --select-best metric, else
        /// reranked.mrr10 or mrr10, whichever it logs).
        #[arg(long)]
        metric: Option<String>,
    },
    /// Encode texts with a model bundle's encoder into a safetensors file:
    /// `embeddings` [n, d] for a pooled encoder, `tokens` [n, L, d] and
    /// `mask` [n, L] for a token encoder, and for a Mixture of Logits head
    /// `components` [n, P, c] (the side's unit component embeddings); ids
    /// (when lines have them) in OUTPUT.ids.txt, one a line in row order
    /// (empty for a line without).
    Encode {
        #[arg(long)]
        model: PathBuf,
        /// JSONL: a JSON string a line, or {"id" | "_id": ..., "text": ...}
        /// (a BEIR corpus.jsonl works).
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Which encoder: passages or queries (the same one when tied).
        #[arg(long, default_value = "passages", value_parser = ["passages", "queries"])]
        side: String,
        #[command(flatten)]
        run: RunArgs,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Serve a model bundle over text-embeddings-inference's HTTP API
    /// (/rerank, /embed, /embed_all, /v1/embeddings, /info, /health,
    /// /metrics) until SIGTERM or Ctrl-C (docs/serving.md).
    Serve(ServeArgs),
    /// Export a bundle's encoder for other tools: `--format
    /// sentence-transformers` writes a folder that `SentenceTransformer(DIR)`
    /// and text-embeddings-inference load (encoder, pooling, projection as
    /// Dense, Normalize); `--format pylate` a MaxSim bundle's token encoder
    /// as a folder that PyLate's `ColBERT(DIR)` loads. The learned head
    /// stays in the bundle (docs/models.md).
    Export {
        #[arg(long)]
        model: PathBuf,
        /// sentence-transformers or pylate.
        #[arg(long, value_parser = parse_export_format)]
        format: ExportFormat,
        /// The new folder (must not exist, or be empty).
        #[arg(long)]
        output: PathBuf,
        /// Which encoder of an untied bundle: passages or queries.
        #[arg(long, default_value = "passages", value_parser = ["passages", "queries"])]
        side: String,
    },
    /// Mine hard negatives for (query, positive) pairs from a corpus with a
    /// model's first stage: writes training records (query, positives,
    /// negatives) for `gradcache train --train-jsonl`. Candidates ranked in
    /// [--range-min, --range-max) that score clearly below the positive
    /// (--margin, --relative-margin: the false-negative guard) become
    /// negatives (docs/training.md).
    Mine {
        /// A model bundle, or a pretrained model folder (cosine of its
        /// pooled vectors).
        #[arg(long)]
        model: PathBuf,
        /// JSONL: {"query": "...", "positive": "..."} (or "positives": [...]).
        #[arg(long)]
        pairs: PathBuf,
        /// JSONL: a JSON string a line, or {"_id" | "id": ..., "text": ...}
        /// (a BEIR corpus.jsonl works).
        #[arg(long)]
        corpus: PathBuf,
        /// The training records to write (atomically).
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value_t = gradcache::app::mine::MineConfig::default().negatives)]
        negatives: usize,
        #[arg(long, default_value_t = gradcache::app::mine::MineConfig::default().range_min)]
        range_min: usize,
        #[arg(long, default_value_t = gradcache::app::mine::MineConfig::default().range_max)]
        range_max: usize,
        /// A negative scores at most the positive's score minus this.
        #[arg(long, default_value_t = gradcache::app::mine::MineConfig::default().absolute_margin)]
        margin: f64,
        /// A negative scores at most the positive's score times (1 - this).
        #[arg(long, default_value_t = gradcache::app::mine::MineConfig::default().relative_margin)]
        relative_margin: f64,
        /// Longest tokenized text, for a model folder (a bundle has its own).
        #[arg(long, default_value_t = 128)]
        max_len: usize,
        /// Also write the records that got fewer than --negatives negatives
        /// (by default they are left out: training needs group_size - 1
        /// negatives per record).
        #[arg(long)]
        keep_short: bool,
        #[command(flatten)]
        run: RunArgs,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Rerank candidate lists with a model bundle: JSONL lines
    /// {"query": "...", "candidates": ["...", {"id": 7, "text": "..."}]} in;
    /// the same lines out, candidates sorted by score with their scores.
    Rerank {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// Output file (default: stdout); written atomically.
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
}

fn check(head: Option<String>, config: Option<PathBuf>, dim: usize, dropout: f64, queries: usize, group: usize, f32: bool) -> Result<bool> {
    let head_config: HeadConfig = match (head, config) {
        (_, Some(path)) => serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?,
        (Some(name), None) => HeadConfig::named(&name, dim, dropout)?,
        (None, None) => anyhow::bail!("give --head NAME or --config FILE"),
    };
    let report = check_sample_head(&head_config, dim, dropout, queries, group, f32)?;
    let mut out = std::io::stdout().lock();
    let printed = writeln!(out, "{}", serde_json::to_string(&head_config)?).and_then(|()| write!(out, "{report}"));
    match printed {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(report.passed())
}

fn parse_export_format(name: &str) -> std::result::Result<ExportFormat, String> {
    ExportFormat::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = ExportFormat::ALL.iter().map(|f| f.name()).collect();
        format!("one of: {}", names.join(", "))
    })
}

/// A bundle, or a pretrained folder's encoder with the cosine head.
#[allow(clippy::too_many_arguments)]
fn mine(
    model: &Path,
    pairs: &Path,
    corpus: &Path,
    output: &Path,
    config: &gradcache::app::mine::MineConfig,
    max_len: usize,
    keep_short: bool,
    run: &RunArgs,
    quiet: bool,
) -> Result<()> {
    config.validate()?;
    // Where the records go is checked before the work, not after it.
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let scorer = load_bundle_or_folder(model, max_len, run)?;
    let records = gradcache::app::data::parquet::read_training_file(pairs, Malformed::Fail)?.items;
    let texts = read_texts(corpus, Malformed::Fail)?.items;
    let corpus_texts: Vec<&str> = texts.iter().map(|t| t.text.as_str()).collect();
    eprintln!("{} pairs, {} documents", records.len(), corpus_texts.len());
    let started = Instant::now();
    let (mined, report) = gradcache::app::mine::mine_negatives(&scorer, &records, &corpus_texts, config, &mut stderr_progress(quiet))?;
    let mut jsonl = String::new();
    let mut written = 0;
    for record in mined.iter().filter(|r| keep_short || r.negatives.len() == config.negatives) {
        jsonl.push_str(&serde_json::to_string(record)?);
        jsonl.push('\n');
        written += 1;
    }
    write_bytes_atomically(output, jsonl.as_bytes())?;
    let short = if keep_short { "kept (--keep-short)" } else { "left out (--keep-short keeps them)" };
    println!(
        "wrote {written} records to {} in {:.0} s; {} pairs got fewer than {} negatives: {short}; {} candidates dropped by the margins, {} for being a positive",
        output.display(),
        started.elapsed().as_secs_f64(),
        report.short,
        config.negatives,
        report.dropped_by_margin,
        report.dropped_positives
    );
    Ok(())
}

/// A bundle as `run` asks.
fn load_scorer(model: &Path, run: &RunArgs) -> Result<Scorer> {
    run.load(model).with_context(|| format!("loading the model bundle {}", model.display()))
}

/// A bundle, or a pretrained model folder's encoder (its own pooling and
/// normalisation) under the cosine head with texts cut at `max_len`.
fn load_bundle_or_folder(model: &Path, max_len: usize, run: &RunArgs) -> Result<Scorer> {
    if model.join(gradcache::app::scorer::BUNDLE_FILE).is_file() {
        return load_scorer(model, run);
    }
    let folder = gradcache::models::pretrained::ModelDir::open(model)
        .with_context(|| format!("{} is neither a gradcache bundle nor a model folder", model.display()))?;
    let head = HeadConfig::Cosine(Default::default());
    let config = gradcache::ModelConfig::new(Default::default(), max_len, true, head, Default::default());
    Ok(Scorer::from_pretrained(config, &folder, gradcache::runtime::parse_device(&run.device)?)?.with_precision(run.precision)?)
}

fn parse_first_stage(s: &str) -> std::result::Result<FirstStage, String> {
    s.parse().map_err(|e: gradcache::GradCacheError| e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn eval(
    model: &Path,
    data: &Path,
    split: &str,
    retrieve_k: usize,
    how: FirstStage,
    max_len: usize,
    output: Option<PathBuf>,
    skip: bool,
    run_args: &RunArgs,
    quiet: bool,
) -> Result<()> {
    let scorer = load_bundle_or_folder(model, max_len, run_args)?;
    let (set, skipped) = read_beir(data, split, if skip { Malformed::Skip } else { Malformed::Fail })?;
    if skipped > 0 {
        eprintln!("skipped {skipped} malformed lines in {}", data.display());
    }
    gradcache::app::retrieval::check_trec_ids(&set)?;
    let k = retrieve_k.max(1).min(set.corpus.len());
    match how {
        FirstStage::Cosine => {
            eprintln!("{} queries, {} documents; the head reranks each query's top {k}", set.queries.len(), set.corpus.len())
        }
        _ => eprintln!(
            "{} queries, {} documents; the head ranks the corpus itself ({}), top {k}",
            set.queries.len(),
            set.corpus.len(),
            how.name()
        ),
    }
    let started = Instant::now();
    let run = evaluate_retrieval(&scorer, &set, k, how, &mut stderr_progress(quiet))?;
    let seconds = started.elapsed().as_secs_f64();
    let name = data.file_name().map_or("data".into(), |n| n.to_string_lossy().into_owned());
    let out = output.unwrap_or_else(|| PathBuf::from("eval").join(format!("{name}-{split}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_trec_run(&out.join("run.trec"), &set, &run.reranked, "gradcache")?;
    let metrics = serde_json::json!({
        "model": model, "data": data, "split": split, "queries": set.queries.len(), "documents": set.corpus.len(),
        "retrieve_k": k, "first_stage_kind": how.name(), "seconds": seconds,
        "first_stage": run.first_stage_metrics, "reranked": run.reranked_metrics,
    });
    write_bytes_atomically(&out.join("metrics.json"), serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<34}{:>8}{:>8}{:>8}{:>8}{:>9}{:>12}",
        format!("{name} {split} ({} queries)", set.queries.len()),
        "Top-1",
        "Top-5",
        "Top-20",
        "MRR@10",
        "nDCG@10",
        "Recall@100"
    )?;
    let rows = match how {
        FirstStage::Cosine => vec![
            ("first stage (encoder cosine)".to_string(), &run.first_stage_metrics),
            (format!("reranked by the head (top {k})"), &run.reranked_metrics),
        ],
        _ => vec![(format!("the head as first stage ({})", how.name()), &run.first_stage_metrics)],
    };
    for (label, m) in rows {
        writeln!(o, "{label:<34}{:>8.3}{:>8.3}{:>8.3}{:>8.3}{:>9.3}{:>12.3}", m.top1, m.top5, m.top20, m.mrr10, m.ndcg10, m.recall100)?;
    }
    writeln!(o, "{seconds:.0} s; wrote {} and {}", out.join("metrics.json").display(), out.join("run.trec").display())?;
    Ok(())
}

fn encode(model: &Path, input: &Path, output: &Path, side: &str, run: &RunArgs, quiet: bool) -> Result<()> {
    let scorer = load_scorer(model, run)?;
    let lines = read_texts(input, Malformed::Fail)?.items;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let side = if side == "queries" { Side::Queries } else { Side::Passages };
    let mut printer = stderr_progress(quiet);
    let started = Instant::now();
    let rep = scorer.encode_many(&texts, side, &mut |done, total| printer("encoding", done, total))?;
    let mut named: Vec<(String, tch::Tensor)> = match &rep {
        Representation::Vector(v) => vec![("embeddings".into(), v.shallow_clone())],
        Representation::Tokens { tokens, mask } => vec![("tokens".into(), tokens.shallow_clone()), ("mask".into(), mask.shallow_clone())],
    };
    // A Mixture of Logits head indexes each text as its unit component
    // embeddings, what its component searches read (docs/inference.md).
    if let Some(components) = tch::no_grad(|| scorer.precision().run(|| scorer.head().components(&rep, side).transpose()))? {
        named.push(("components".into(), components));
    }
    let model_text = model.display().to_string();
    let count = texts.len().to_string();
    let side_name = format!("{side}");
    let bytes = encode_safetensors(&named, &[("model", &model_text), ("side", &side_name), ("count", &count)])?;
    write_bytes_atomically(output, &bytes)?;
    if lines.iter().any(|l| l.id.is_some()) {
        // A line without an id gets an empty line, so row i is line i.
        let ids: String = lines.iter().map(|l| l.id.clone().unwrap_or_default() + "\n").collect();
        let mut ids_path = output.as_os_str().to_owned();
        ids_path.push(".ids.txt");
        write_bytes_atomically(Path::new(&ids_path), ids.as_bytes())?;
    }
    let shapes: Vec<String> = named.iter().map(|(n, t)| format!("{n} {:?}", t.size())).collect();
    println!("{} texts in {:.1} s -> {} ({})", texts.len(), started.elapsed().as_secs_f64(), output.display(), shapes.join(", "));
    Ok(())
}

fn rerank(model: &Path, input: &Path, output: Option<&Path>, run: &RunArgs) -> Result<()> {
    let scorer = load_scorer(model, run)?;
    let requests = read_rerank_requests(input, Malformed::Fail)?;
    let mut text = String::new();
    for r in &requests.items {
        let ranked = if r.candidates.is_empty() {
            Vec::new()
        } else {
            let texts: Vec<&str> = r.candidates.iter().map(|c| c.text.as_str()).collect();
            scorer.rerank(&r.query, &texts)?
        };
        text += &(r.answer(&ranked).to_string() + "\n");
    }
    match output {
        Some(path) => write_bytes_atomically(path, text.as_bytes())?,
        None => {
            let written = std::io::stdout().lock().write_all(text.as_bytes());
            match written {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(())
}

fn main() -> Result<ExitCode> {
    gradcache::runtime::tune_allocator();
    match Cli::parse().command {
        Command::CheckHead { head, config, dim, dropout, queries, group, f32 } => {
            let passed = check(head, config, dim, dropout, queries, group, f32)?;
            Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::PrepareWordnet { out, beir: Some(beir), queries, .. } => {
            let data = WordSenseData::read(&out).with_context(|| format!("reading the prepared task in {}", out.display()))?;
            for (split, name) in [(Split::Dev, "dev"), (Split::Test, "test")] {
                let eval = data.sense_eval(split, queries);
                let dir = beir.join(name);
                write_beir(&eval.set, &dir, name)?;
                println!("{name}: {} queries, {} documents -> {}", eval.set.queries.len(), eval.set.corpus.len(), dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            let config = args.config();
            match gradcache::app::serve::run(config) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                // A supervisor restarts on this code (docs/serving.md).
                Err(e @ gradcache::app::error::AppError::ModelDied { .. }) => {
                    eprintln!("error: serving {}: {e}", args.model.display());
                    Ok(ExitCode::from(gradcache::app::serve::EXIT_MODEL_DIED))
                }
                Err(e) => Err(e).with_context(|| format!("serving {}", args.model.display())),
            }
        }
        Command::Train(args) => {
            let config = args.resolve().context("reading the run's settings")?;
            let report = recipe::run(&config, args.start(), &gradcache::cli::console::Console::new())
                .with_context(|| format!("training into {}", config.output_dir.display()))?;
            gradcache::cli::print_report(&report);
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { model, data, split, retrieve_k, first_stage, max_len, output, skip_malformed, run, quiet } => {
            eval(&model, &data, &split, retrieve_k, first_stage, max_len, output, skip_malformed, &run, quiet)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plot { run, output, metric } => {
            let curves = gradcache::app::plot::RunCurves::read(&run)?;
            let metric = curves.metric(&run, metric.as_deref())?;
            let output = output.unwrap_or_else(|| run.join("plot.png"));
            let title = run.display().to_string();
            gradcache::app::plot::draw(&curves, metric.as_deref(), &title, &output)?;
            let evals = curves.evals.len();
            match &metric {
                Some(m) => println!("{}: loss over {} steps, {m} at {evals} evaluations", output.display(), curves.loss.len()),
                None => println!("{}: loss over {} steps (the run logged no evaluation)", output.display(), curves.loss.len()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Encode { model, input, output, side, run, quiet } => {
            encode(&model, &input, &output, &side, &run, quiet)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mine {
            model,
            pairs,
            corpus,
            output,
            negatives,
            range_min,
            range_max,
            margin,
            relative_margin,
            max_len,
            keep_short,
            run,
            quiet,
        } => {
            let config = gradcache::app::mine::MineConfig { negatives, range_min, range_max, absolute_margin: margin, relative_margin };
            mine(&model, &pairs, &corpus, &output, &config, max_len, keep_short, &run, quiet)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { model, format, output, side } => {
            let scorer = Scorer::load(&model, tch::Device::Cpu).with_context(|| format!("loading {}", model.display()))?;
            let side = if side == "queries" { Side::Queries } else { Side::Passages };
            let report = gradcache::app::export::export(&scorer, format, side, &output)?;
            if !scorer.config().tied {
                println!("the bundle's encoders are not tied: exported the {side} encoder (--side)");
            }
            println!("wrote {} ({}; {} of width {})", output.display(), report.modules.join(" -> "), format.vectors(), report.dim);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rerank { model, input, output, run } => {
            rerank(&model, &input, output.as_deref(), &run)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PrepareWordnet { wordnet, out, beir: None, .. } => {
            let data = WordSenseData::from_wordnet(&wordnet)
                .with_context(|| format!("reading WordNet from {} (apt-get install wordnet-base)", wordnet.display()))?;
            data.write(&out)?;
            // WordNet's license travels with the data: it is the header of each data file.
            let header = std::fs::read_to_string(wordnet.join("data.noun"))?;
            let license: String = header
                .lines()
                .take_while(|l| l.starts_with("  "))
                .map(|l| l.trim_start().split_once(' ').map_or("", |(_, rest)| rest).to_string() + "\n")
                .collect();
            std::fs::write(out.join("LICENSE-WordNet.txt"), license)?;
            for split in [Split::Train, Split::Dev, Split::Test] {
                println!("{split:?}: {} usage examples", data.examples(split).count());
            }
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
