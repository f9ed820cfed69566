//! Every default has one source. The recipe behind `gradcache train` (the
//! main job) takes the library's defaults except where it says otherwise,
//! in `RECIPE_OVERRIDES`; this reads each default through the recipe and
//! through the library and finds them equal, or listed there. A default
//! restated by hand in the recipe, or changed in one place only, fails
//! here.

use std::collections::BTreeMap;

use gradcache::app::recipe::{RerankerConfig, RECIPE_CHUNK_TOKENS, RECIPE_LAYOUT, RECIPE_OVERRIDES};
use gradcache::app::settings::flatten;
use gradcache::app::train::TrainConfig;
use gradcache::models::encoders::TextEncoderConfig;
use gradcache::models::heads::HeadConfig;
use gradcache::{InfoNce, Layout, ModelConfig, StepConfig};

/// The blocks of the recipe's config that are the library's configs, with
/// the library's defaults for each.
fn library_defaults() -> serde_json::Value {
    serde_json::json!({
        "step": StepConfig::default(),
        "loss": InfoNce::default(),
        "head": HeadConfig::default(),
        "encoder": TextEncoderConfig::default(),
        "train": TrainConfig::default(),
    })
}

/// The fields whose values differ between two configs' JSON (or that one
/// side lacks), by dotted path.
fn differing(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = (flatten(a), flatten(b));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

fn recipe_blocks(recipe: &RerankerConfig) -> serde_json::Value {
    let full = serde_json::to_value(recipe).unwrap();
    let blocks = ["step", "loss", "head", "encoder", "train"];
    serde_json::Value::Object(
        full.as_object().unwrap().iter().filter(|(k, _)| blocks.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect(),
    )
}

#[test]
fn the_recipe_differs_from_the_library_only_where_it_says_so() {
    let found = differing(&recipe_blocks(&RerankerConfig::default()), &library_defaults());
    let covers = |listed: &str, field: &str| field == listed || field.starts_with(&format!("{listed}."));
    let unlisted: Vec<&String> = found.iter().filter(|f| !RECIPE_OVERRIDES.iter().any(|l| covers(l, f))).collect();
    assert!(
        unlisted.is_empty(),
        "the recipe overrides library defaults that RECIPE_OVERRIDES (and docs/training.md) do not list: {unlisted:?}"
    );
    let stale: Vec<&&str> = RECIPE_OVERRIDES.iter().filter(|l| !found.iter().any(|f| covers(l, f))).collect();
    assert!(stale.is_empty(), "RECIPE_OVERRIDES lists fields the recipe no longer overrides: {stale:?}");
}

#[test]
fn the_check_sees_a_default_changed_in_the_recipe_alone() {
    // A recipe that restated the MLP head's hidden width as another number
    // (the kind of copy that drifts) is caught.
    let mut drifted = RerankerConfig::default();
    if let HeadConfig::Mlp(mlp) = &mut drifted.head {
        mlp.hidden += 1;
    }
    let found = differing(&recipe_blocks(&drifted), &library_defaults());
    assert!(found.contains(&"head.hidden".to_string()), "{found:?}");
}

#[test]
fn one_layout_type_serves_the_step_and_the_bundle_with_one_rule_for_chunk_size() {
    // The step's JSON keeps the layout's fields flat, as before it had a type.
    let json = serde_json::to_value(StepConfig::default()).unwrap();
    for (field, value) in [("query_chunk_size", 32), ("passage_chunk_size", 32), ("head_block_queries", 32), ("head_block_passages", 128)] {
        assert_eq!(json[field], value, "{field}");
    }
    let layout = Layout::default();
    assert_eq!(StepConfig::default().layout, layout);
    // A bundle built in code scores with the library's layout; one trained
    // by the recipe records the recipe's.
    assert_eq!(
        ModelConfig::new(Default::default(), 48, true, HeadConfig::default(), Layout::default()).layout,
        StepConfig::default().layout
    );
    assert_eq!(RerankerConfig::default().model_config().layout, RECIPE_LAYOUT);
    assert_eq!(RerankerConfig::default().step.layout, RECIPE_LAYOUT);
    // `--chunk-size v`: chunks of v, blocks of v × 4v, from one rule.
    let from_flag = gradcache::cli::TrainArgs { chunk_size: Some(8), ..Default::default() }.resolve().unwrap();
    assert_eq!(from_flag.step.layout, Layout::from_chunk_size(8));
    // The recipe cuts by tokens; asking for item chunks drops its budgets
    // (else they would silently win), and --chunk-tokens still sets them.
    let recipe = RerankerConfig::default().step;
    assert_eq!((recipe.query_chunk_tokens, recipe.passage_chunk_tokens), (Some(RECIPE_CHUNK_TOKENS), Some(RECIPE_CHUNK_TOKENS)));
    assert_eq!((from_flag.step.query_chunk_tokens, from_flag.step.passage_chunk_tokens), (None, None));
    let both = gradcache::cli::TrainArgs { chunk_size: Some(8), chunk_tokens: Some(100), ..Default::default() }.resolve().unwrap();
    assert_eq!(
        (both.step.layout.query_chunk_size, both.step.query_chunk_tokens, both.step.passage_chunk_tokens),
        (8, Some(100), Some(100))
    );
    // In a config file, `null` selects item chunks over the recipe's budgets.
    let path = std::env::temp_dir().join(format!("gradcache-defaults-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"step": {"query_chunk_size": 8, "query_chunk_tokens": null}}"#).unwrap();
    let from_file = gradcache::cli::TrainArgs { config: Some(path.clone()), ..Default::default() }.resolve().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        (from_file.step.layout.query_chunk_size, from_file.step.query_chunk_tokens, from_file.step.passage_chunk_tokens),
        (8, None, Some(RECIPE_CHUNK_TOKENS))
    );
    assert_eq!(
        Layout::from_chunk_size(8),
        Layout { query_chunk_size: 8, passage_chunk_size: 8, head_block_queries: 8, head_block_passages: 32 }
    );
}

#[test]
fn a_token_budget_too_small_for_max_len_gets_a_note() {
    let recipe = RerankerConfig::default();
    // 512 tokens at max_len 48: 10 texts, nothing to say.
    assert_eq!(gradcache::app::recipe::chunk_note(&recipe.step, 48), None);
    // At max_len 256 the same budget holds 2 full-length texts.
    let note = gradcache::app::recipe::chunk_note(&recipe.step, 256).unwrap();
    assert!(note.contains("holds 2 text(s) of max_len 256") && note.contains("--chunk-tokens 4096"), "{note}");
    // Item chunks have no token budget to warn about.
    let items = gradcache::cli::TrainArgs { chunk_size: Some(8), ..Default::default() }.resolve().unwrap();
    assert_eq!(gradcache::app::recipe::chunk_note(&items.step, 256), None);
}

#[test]
fn a_step_config_refuses_unknown_fields_despite_the_flattened_layout() {
    let err = serde_json::from_str::<StepConfig>(r#"{"query_chunk_size": 8, "chunk_sise": 3}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `chunk_sise`"), "{err}");
    let ok: StepConfig = serde_json::from_str(r#"{"query_chunk_size": 8, "train": false}"#).unwrap();
    assert_eq!((ok.layout.query_chunk_size, ok.layout.passage_chunk_size, ok.train), (8, 32, false));
}
