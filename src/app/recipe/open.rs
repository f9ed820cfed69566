//! Opening what a run works on: the tokenizer, the training records, the
//! evaluation sets, the model to train and the pretrained baseline.

use super::config::RerankerConfig;
use super::data::training_records;
use super::evaluation::Evaluation;
use super::preflight::Resolved;
use crate::app::data::wordnet::WordSenseData;
use crate::app::data::TrainingRecord;
use crate::app::error::Result;
use crate::app::reporter::Reporter;
use crate::app::scorer::{ModelConfig, Scorer};
use crate::core::distributed::Collective;
use crate::models::encoders::Pooling;
use crate::models::heads::{CosineHeadConfig, HeadConfig};
use crate::models::text::TextTokenizer;

/// What a run works on.
pub(super) struct Opened {
    pub tok: TextTokenizer,
    pub task: WordSenseData,
    pub records: Vec<TrainingRecord>,
    pub evaluation: Evaluation,
    /// The model trained: the pretrained encoder and a fresh head,
    /// initialised from the seed.
    pub scorer: Scorer,
    /// The pretrained encoder's cosine of its pooled vectors (none for
    /// token encoders, which have no such baseline).
    pub pretrained: Option<Scorer>,
    /// Each process's share of a global batch: contiguous, in rank order,
    /// the first ones one query fewer when it does not divide evenly.
    pub shares: Vec<usize>,
}

impl Opened {
    /// The first query of this process's share.
    pub fn own_start(&self, rank: usize) -> usize {
        self.shares[..rank].iter().sum()
    }
}

/// Opens what the resolved run `r` works on.
///
/// # Errors
/// Reading the model, the task, the records or the evaluation sets.
pub(super) fn open(r: &Resolved, world: &dyn Collective, say: &dyn Reporter) -> Result<Opened> {
    let c: &RerankerConfig = &r.c;
    let tok = r.model.tokenizer(c.max_len)?;
    let task = WordSenseData::read(&c.data_dir)?;
    let records = training_records(c, &task, say)?;
    crate::app::data::check_negatives(&records, c.group_size)?;
    let evaluation = Evaluation::open(c, &task, say)?;
    // Initialisation (the head, a projection) is reproducible from the seed too.
    tch::manual_seed(c.train.seed as i64);
    let scorer = Scorer::from_pretrained(c.model_config(), &r.model, r.device)?;
    let pretrained = if scorer.config().encoder.pooling() == Pooling::Tokens {
        None
    } else {
        let cosine = ModelConfig { head: HeadConfig::Cosine(CosineHeadConfig::default()), ..c.model_config() };
        Some(Scorer::from_pretrained(cosine, &r.model, r.device)?)
    };
    let ranks = world.world_size();
    let shares = (0..ranks).map(|rank| c.batch_size / ranks + usize::from(rank >= ranks - c.batch_size % ranks)).collect();
    Ok(Opened { tok, task, records, evaluation, scorer, pretrained, shares })
}
