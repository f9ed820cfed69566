//! The built-in task: WordNet usage examples → word senses.
//!
//! A query is a usage example from a WordNet gloss ("he sat on the bank of
//! the river"); its positive passage is `"lemma: definition"` of the sense it
//! illustrates; its hard negatives are the lemma's other senses (same word,
//! other meaning). Splits are by synset, so dev and test senses never appear
//! in training, as positives or as negatives.
//!
//! [`WordSenseData::from_wordnet`] reads WordNet 3.0's `data.{noun,verb,adj,adv}`
//! (Debian's `wordnet-base`); [`WordSenseData::write`] and
//! [`WordSenseData::read`] keep the prepared task in two small TSV files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{read_lines, Malformed, RetrievalSet, TrainingRecord};
use crate::app::error::{DataLineError, Result};
use crate::models::weights::write_bytes_atomically;

/// A split of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// 80% of synsets.
    Train,
    /// 10% of synsets.
    Dev,
    /// 10% of synsets.
    Test,
}

impl Split {
    /// `train`, `dev` or `test`: the name in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }

    fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "dev" => Some(Split::Dev),
            "test" => Some(Split::Test),
            _ => None,
        }
    }

    /// The split of a synset: a fixed hash of its id (FNV-1a), 80/10/10.
    pub fn of_synset(id: &str) -> Split {
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        match h % 10 {
            0 => Split::Test,
            1 => Split::Dev,
            _ => Split::Train,
        }
    }
}

/// One synset of a WordNet data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synset {
    /// Part-of-speech letter and offset, e.g. `n09213565`.
    pub id: String,
    /// Its lemmas, lower-case, words separated by spaces.
    pub lemmas: Vec<String>,
    /// The gloss without its examples.
    pub definition: String,
    /// The quoted usage examples of the gloss.
    pub examples: Vec<String>,
}

fn normalize_lemma(word: &str) -> String {
    // Adjectives may carry a syntactic marker: "galore(ip)".
    let word = word.split('(').next().unwrap_or(word);
    word.replace('_', " ").to_lowercase()
}

fn parse_synset(pos: char, line: &str) -> std::result::Result<Synset, DataLineError> {
    let (head, gloss) = line.split_once('|').ok_or(DataLineError::Format("no gloss separator `|`"))?;
    let fields: Vec<&str> = head.split_whitespace().collect();
    if fields.len() < 6 {
        return Err(DataLineError::Columns { expected: 6, found: fields.len() });
    }
    let count = usize::from_str_radix(fields[3], 16).map_err(|_| DataLineError::Number(fields[3].to_string()))?;
    if fields.len() < 4 + 2 * count {
        return Err(DataLineError::Format("fewer words than the word count says"));
    }
    let lemmas = (0..count).map(|i| normalize_lemma(fields[4 + 2 * i])).collect();
    let gloss = gloss.trim();
    let mut examples = Vec::new();
    let mut rest = gloss;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let example = after[..end].trim();
        if !example.is_empty() {
            examples.push(example.to_string());
        }
        rest = &after[end + 1..];
    }
    let definition = gloss.split('"').next().unwrap_or("").trim().trim_end_matches(';').trim().to_string();
    Ok(Synset { id: format!("{pos}{}", fields[0]), lemmas, definition, examples })
}

/// Parses a WordNet `data.*` file (`pos` is `n`, `v`, `a` or `r`). The
/// license header (lines starting with spaces) is skipped.
///
/// # Errors
/// [`crate::GradCacheError::Io`]; [`crate::AppError::DataLine`] for a malformed line.
pub fn parse_data_file(path: &Path, pos: char) -> Result<Vec<Synset>> {
    Ok(read_lines(path, Malformed::Fail, |_, line| {
        if line.starts_with(' ') {
            return Ok(None);
        }
        parse_synset(pos, line).map(Some)
    })?
    .items)
}

/// One usage example, the sense it illustrates, and its split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageExample {
    /// The synset's split.
    pub split: Split,
    /// The synset it illustrates.
    pub synset: String,
    /// The lemma it illustrates.
    pub lemma: String,
    /// The example sentence (the query).
    pub text: String,
}

/// Where the prepared WordNet task lives in the repository: the recipe's
/// default data and `gradcache prepare-wordnet`'s default output.
pub const EMBEDDED_TASK_DIR: &str = "examples/data/wordnet";

/// The prepared task: definitions, each example lemma's senses, and the
/// usage examples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WordSenseData {
    definitions: BTreeMap<String, String>,
    senses: BTreeMap<String, Vec<String>>,
    examples: Vec<UsageExample>,
}

/// Whether `lemma` occurs in `text` as whole words.
fn mentions(text: &str, lemma: &str) -> bool {
    text.match_indices(lemma).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + lemma.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

impl WordSenseData {
    /// Builds the task from WordNet's four data files in `dir`. An example
    /// illustrates the longest of its synset's lemmas that it mentions (the
    /// first lemma when it mentions none); examples whose lemma has only one
    /// sense are dropped, since there is nothing to disambiguate.
    ///
    /// # Errors
    /// As [`parse_data_file`].
    pub fn from_wordnet(dir: &Path) -> Result<Self> {
        let mut synsets = Vec::new();
        for (file, pos) in [("data.noun", 'n'), ("data.verb", 'v'), ("data.adj", 'a'), ("data.adv", 'r')] {
            synsets.extend(parse_data_file(&dir.join(file), pos)?);
        }
        let mut all_senses: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in &synsets {
            for l in &s.lemmas {
                let ids = all_senses.entry(l).or_default();
                // "A" and "a" in one synset are one sense of "a".
                if ids.last() != Some(&s.id.as_str()) {
                    ids.push(&s.id);
                }
            }
        }
        let mut data = WordSenseData::default();
        for s in &synsets {
            for text in &s.examples {
                let lower = text.to_lowercase();
                let lemma = s.lemmas.iter().filter(|l| mentions(&lower, l)).max_by_key(|l| l.len()).unwrap_or(&s.lemmas[0]);
                let senses = &all_senses[lemma.as_str()];
                if senses.len() < 2 {
                    continue;
                }
                data.senses.entry(lemma.clone()).or_insert_with(|| senses.iter().map(|s| s.to_string()).collect());
                data.examples.push(UsageExample {
                    split: Split::of_synset(&s.id),
                    synset: s.id.clone(),
                    lemma: lemma.clone(),
                    text: text.clone(),
                });
            }
        }
        let needed: std::collections::HashSet<&String> = data.senses.values().flatten().collect();
        data.definitions = synsets.iter().filter(|s| needed.contains(&s.id)).map(|s| (s.id.clone(), s.definition.clone())).collect();
        Ok(data)
    }

    /// Writes `synsets.tsv` (`id \t definition`), `senses.tsv`
    /// (`lemma \t id id …`) and `examples.tsv` (`split \t synset \t lemma \t text`).
    ///
    /// # Errors
    /// [`crate::GradCacheError::Io`].
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(crate::error::io_error(dir))?;
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        let synsets: String = self.definitions.iter().map(|(id, d)| format!("{id}\t{}\n", clean(d))).collect();
        let senses: String = self.senses.iter().map(|(l, ids)| format!("{l}\t{}\n", ids.join(" "))).collect();
        let examples: String =
            self.examples.iter().map(|e| format!("{}\t{}\t{}\t{}\n", e.split.name(), e.synset, e.lemma, clean(&e.text))).collect();
        write_bytes_atomically(&dir.join("synsets.tsv"), synsets.as_bytes())?;
        write_bytes_atomically(&dir.join("senses.tsv"), senses.as_bytes())?;
        write_bytes_atomically(&dir.join("examples.tsv"), examples.as_bytes()).map_err(Into::into)
    }

    /// Reads the files [`WordSenseData::write`] made.
    ///
    /// # Errors
    /// [`crate::GradCacheError::Io`]; [`crate::AppError::DataLine`] for a malformed
    /// line or an id that the other files do not define.
    pub fn read(dir: &Path) -> Result<Self> {
        let tabs = |line: &str, n: usize| -> std::result::Result<Vec<String>, DataLineError> {
            let cols: Vec<String> = line.split('\t').map(str::to_string).collect();
            if cols.len() != n {
                return Err(DataLineError::Columns { expected: n, found: cols.len() });
            }
            Ok(cols)
        };
        let definitions: BTreeMap<String, String> = read_lines(&dir.join("synsets.tsv"), Malformed::Fail, |_, l| {
            let c = tabs(l, 2)?;
            Ok(Some((c[0].clone(), c[1].clone())))
        })?
        .items
        .into_iter()
        .collect();
        let senses: BTreeMap<String, Vec<String>> = read_lines(&dir.join("senses.tsv"), Malformed::Fail, |_, l| {
            let c = tabs(l, 2)?;
            let ids: Vec<String> = c[1].split(' ').map(str::to_string).collect();
            if let Some(bad) = ids.iter().find(|id| !definitions.contains_key(*id)) {
                return Err(DataLineError::UnknownId(bad.clone()));
            }
            Ok(Some((c[0].clone(), ids)))
        })?
        .items
        .into_iter()
        .collect();
        let examples = read_lines(&dir.join("examples.tsv"), Malformed::Fail, |_, l| {
            let c = tabs(l, 4)?;
            let split = Split::parse(&c[0]).ok_or(DataLineError::Format("split must be train, dev or test"))?;
            if !senses.get(&c[2]).is_some_and(|ids| ids.contains(&c[1])) {
                return Err(DataLineError::UnknownId(format!("{} of {}", c[1], c[2])));
            }
            if c[3].trim().is_empty() {
                return Err(DataLineError::EmptyField("text"));
            }
            Ok(Some(UsageExample { split, synset: c[1].clone(), lemma: c[2].clone(), text: c[3].clone() }))
        })?
        .items;
        Ok(WordSenseData { definitions, senses, examples })
    }

    /// The usage examples of a split, in file order.
    pub fn examples(&self, split: Split) -> impl Iterator<Item = &UsageExample> {
        self.examples.iter().filter(move |e| e.split == split)
    }

    /// Every usage example.
    pub fn all_examples(&self) -> &[UsageExample] {
        &self.examples
    }

    /// The passage of a sense: `"lemma: definition"`.
    pub fn sense_text(&self, lemma: &str, synset: &str) -> String {
        format!("{lemma}: {}", self.definitions.get(synset).map(String::as_str).unwrap_or(""))
    }

    /// The synsets of a lemma (every split).
    pub fn senses_of(&self, lemma: &str) -> &[String] {
        self.senses.get(lemma).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The first `n` training records that have a hard negative, as
    /// (query, positive, first hard negative): the batch the speed
    /// benchmarks and their peers share (fewer when there are fewer).
    pub fn hard_negative_triples(&self, n: usize) -> Vec<(String, String, String)> {
        self.training_records()
            .into_iter()
            .filter(|r| !r.negatives.is_empty())
            .take(n)
            .map(|r| (r.query, r.positives[0].clone(), r.negatives[0].clone()))
            .collect()
    }

    /// Training records of the train split: the positive is the illustrated
    /// sense, the negatives are the lemma's other *training* senses.
    pub fn training_records(&self) -> Vec<TrainingRecord> {
        self.examples(Split::Train)
            .map(|e| TrainingRecord {
                query: e.text.clone(),
                positives: vec![self.sense_text(&e.lemma, &e.synset)],
                negatives: self
                    .senses_of(&e.lemma)
                    .iter()
                    .filter(|s| **s != e.synset && Split::of_synset(s) == Split::Train)
                    .map(|s| self.sense_text(&e.lemma, s))
                    .collect(),
            })
            .collect()
    }

    /// An evaluation set over the first `max_queries` examples of `split`:
    /// the corpus holds every sense (`lemma#synset`, spaces in a lemma as
    /// `_`) of their lemmas, so it
    /// contains each query's gold sense and all its same-word distractors.
    pub fn sense_eval(&self, split: Split, max_queries: usize) -> SenseEval {
        let mut set = RetrievalSet::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut candidates = Vec::new();
        let mut gold = Vec::new();
        for (qi, e) in self.examples(split).take(max_queries).enumerate() {
            let qid = format!("q{qi}");
            let mut cands = Vec::new();
            for s in self.senses_of(&e.lemma) {
                // WordNet's own form of a multi-word lemma (`power_play`):
                // ids stay free of whitespace, as TREC run files need.
                let did = format!("{}#{s}", e.lemma.replace(' ', "_"));
                let next = set.corpus.len();
                let i = *index.entry(did.clone()).or_insert(next);
                if i == next {
                    set.corpus.push((did.clone(), self.sense_text(&e.lemma, s)));
                }
                cands.push(i);
                if *s == e.synset {
                    gold.push(i);
                    set.qrels.entry(qid.clone()).or_default().insert(did, 1);
                }
            }
            set.queries.push((qid, e.text.clone()));
            candidates.push(cands);
        }
        SenseEval { set, candidates, gold }
    }
}

/// A word-sense evaluation: a retrieval set plus, per query, the corpus
/// indices of its lemma's senses and of its gold sense.
#[derive(Debug, Clone, PartialEq)]
pub struct SenseEval {
    /// Queries, corpus and qrels.
    pub set: RetrievalSet,
    /// Per query, corpus indices of the lemma's senses.
    pub candidates: Vec<Vec<usize>>,
    /// Per query, corpus index of the gold sense.
    pub gold: Vec<usize>,
}
