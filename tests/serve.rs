//! `gradcache serve` as its clients see it: a real server process on
//! 127.0.0.1 (a free port), TEI's JSON, its statuses, batching under load,
//! limits, and a graceful stop. Every load here is bounded in count and
//! time.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gradcache::app::scorer::ModelConfig;
use gradcache::models::encoders::{Pooling, TextEncoderConfig};
use gradcache::models::heads::HeadConfig;
use gradcache::{Layout, Scorer};
use serde_json::{json, Value};

/// A bundle with a tiny random BERT and `head` (`mlp`, `max_sim`,
/// `interaction` or `mol`), its weights moved off their initialisation so that the
/// residual gate is open. Returns its folder and the model in process.
fn bundle(dir: &Path, head: &str) -> (PathBuf, Scorer) {
    let bert = dir.join("bert");
    let model = if bert.join("config.json").is_file() {
        gradcache::models::pretrained::ModelDir::open(&bert).unwrap()
    } else {
        common::tiny_bert_folder(&bert, 32, 4, 1, 3)
    };
    let head_config = HeadConfig::named(head, 32, 0.1).unwrap();
    let pooling = if head_config.reads_tokens() { Pooling::Tokens } else { Pooling::Mean };
    let encoder = TextEncoderConfig { pooling: Some(pooling), ..Default::default() };
    let layout = Layout { query_chunk_size: 2, passage_chunk_size: 3, head_block_queries: 2, head_block_passages: 4 };
    tch::manual_seed(5);
    let scorer = Scorer::from_pretrained(ModelConfig::new(encoder, 24, true, head_config, layout), &model, tch::Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in scorer.var_store().variables() {
            let noise = v.randn_like() * 0.05;
            let _ = v.f_add_(&noise).unwrap();
        }
    });
    let out = dir.join(format!("model-{head}"));
    scorer.save(&out).unwrap();
    // In process at the server's default precision (`auto`: bf16 on a CPU
    // with bfloat16 units), which the comparisons hold it to.
    (out, scorer.with_precision(gradcache::runtime::precision::Precision::Auto).unwrap())
}

/// A server process; killed when dropped. Started with fault injection
/// on (`GRADCACHE_SERVE_FAULTS=1`), so a test can hold the model thread or
/// make it panic, and waits for the lines the server prints, never for a
/// length of time.
struct Server {
    child: Child,
    base: String,
    lines: std::sync::mpsc::Receiver<String>,
}

/// How long a wait for an event may take before the test calls it lost:
/// generous, so that it bounds a hung test without racing a busy machine.
const EVENT_DEADLINE: Duration = Duration::from_secs(180);

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gradcache"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0", "--device", "cpu"])
            .args(extra)
            .env("GRADCACHE_SERVE_FAULTS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(EVENT_DEADLINE).expect("the server printed nothing");
        let base = first.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address in {first:?}")).to_string();
        let server = Server { child, base, lines };
        server.wait_line("ready");
        server
    }

    /// Waits for the server to print `line` (lines before it are skipped).
    fn wait_line(&self, line: &str) {
        let started = Instant::now();
        loop {
            let left = EVENT_DEADLINE.saturating_sub(started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if l == line => return,
                Ok(_) => {}
                Err(e) => panic!("the server never printed {line:?}: {e}"),
            }
        }
    }

    fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    /// Holds the model thread before its next command.
    fn hold(&self) {
        self.signal(libc::SIGUSR1);
        self.wait_line("fault: model held");
    }

    fn release(&self) {
        self.signal(libc::SIGUSR1);
        self.wait_line("fault: model released");
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(EVENT_DEADLINE)).build().new_agent()
    }

    fn get(&self, path: &str) -> (u16, String) {
        match Self::agent().get(&format!("{}{path}", self.base)).call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// The sum of a metric's samples whose name and labels start with
    /// `name` (e.g. `te_request_failure{err="dropped"}`).
    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        metric_in(&text, name)
    }

    /// Waits until the metric satisfies `until`.
    fn wait_metric(&self, name: &str, until: impl Fn(f64) -> bool) -> f64 {
        let started = Instant::now();
        loop {
            let v = self.metric(name);
            if until(v) {
                return v;
            }
            assert!(started.elapsed() < EVENT_DEADLINE, "{name} stayed at {v}");
            std::thread::yield_now();
        }
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, body, None)
    }

    fn post_with(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let (status, _, body) = self.post_full(path, body, key);
        (status, body)
    }

    /// Status, headers and JSON body (a string when not JSON).
    fn post_full(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, ureq::http::HeaderMap, Value) {
        let mut request = Self::agent().post(&format!("{}{path}", self.base));
        if let Some(k) = key {
            request = request.header("Authorization", &format!("Bearer {k}"));
        }
        let mut r = request.send_json(body).unwrap();
        let headers = r.headers().clone();
        let text = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `post`, on a thread of its own: for requests that must be in flight
    /// while the test goes on.
    fn post_in_thread(&self, path: &str, body: Value) -> std::thread::JoinHandle<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        std::thread::spawn(move || {
            let mut r = Server::agent().post(&url).send_json(body).unwrap();
            (r.status().as_u16(), r.body_mut().read_json::<Value>().unwrap())
        })
    }

    /// A raw HTTP/1.1 request (for bodies no client library sends).
    fn raw(&self, head: &str, body: &[u8]) -> (u16, String) {
        let mut stream = self.connect();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, answer)
    }

    fn connect(&self) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(self.base.strip_prefix("http://").unwrap()).unwrap();
        stream.set_read_timeout(Some(EVENT_DEADLINE)).unwrap();
        stream
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < EVENT_DEADLINE, "the server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn metric_in(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const QUERY: &str = "where does the river meet the sea";

fn texts() -> Vec<String> {
    let long = "the estuary where fresh water mixes with salt water ".repeat(12);
    ["a delta at the mouth of the river", "a bank that lends money", "the tide comes in twice a day", "flour, water and salt", "the sea"]
        .iter()
        .map(|s| s.to_string())
        .chain([long])
        .collect()
}

/// The in-process head's score of each text, in the texts' order.
fn in_process(scorer: &Scorer, query: &str, texts: &[String]) -> Vec<f32> {
    let mut scores = vec![0f32; texts.len()];
    for (i, s) in scorer.rerank(query, texts).unwrap() {
        scores[i] = s as f32;
    }
    scores
}

/// The scores of a `/rerank` answer, in the texts' order: exactly one
/// finite score for each of the `n` texts, or the test fails.
fn served(answer: &Value, n: usize) -> Vec<f32> {
    let ranks = answer.as_array().unwrap_or_else(|| panic!("not a list: {answer}"));
    assert_eq!(ranks.len(), n, "{} answers for {n} texts: {answer}", ranks.len());
    let mut scores = vec![None; n];
    for r in ranks {
        let index = r["index"].as_u64().unwrap_or_else(|| panic!("no index in {r}")) as usize;
        assert!(index < n, "index {index} of {n} texts: {answer}");
        let score = r["score"].as_f64().unwrap_or_else(|| panic!("no score in {r}")) as f32;
        assert!(score.is_finite(), "{answer}");
        assert!(scores[index].replace(score).is_none(), "index {index} twice: {answer}");
    }
    scores.into_iter().map(Option::unwrap).collect()
}

/// Vectors of an embedding answer: `n` of them, each `width` finite numbers.
fn vectors(answer: &Value, n: usize, width: usize) -> Vec<Vec<f32>> {
    let got: Vec<Vec<f32>> = serde_json::from_value(answer.clone()).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(got.len(), n, "{answer}");
    for v in &got {
        assert_eq!(v.len(), width, "{answer}");
        assert!(v.iter().all(|x| x.is_finite()));
    }
    got
}

#[test]
fn served_scores_equal_the_scorer_for_every_head_family() {
    let _serial = common::serial();
    let dir = common::scratch("serve-equal");
    for head in ["mlp", "max_sim", "interaction", "mol"] {
        let (model, scorer) = bundle(&dir, head);
        let server = Server::start(&model, &[]);
        // /info says what /embed returns: the first stage's pooled vectors,
        // and for a Mixture of Logits where its component embeddings are.
        let info: Value = serde_json::from_str(&server.get("/info").1).unwrap();
        let returns = info["model_type"]["reranker"]["embed_returns"].as_str().unwrap_or_default().to_string();
        assert!(returns.contains("pooled"), "{head}: {info}");
        assert_eq!(returns.contains("gradcache encode"), head == "mol", "{head}: {returns}");
        let texts = texts();
        let want = in_process(&scorer, QUERY, &texts);
        // Alone, a request is cut into the same chunks and blocks as
        // Scorer::rerank cuts it: the same bits (the long text is truncated
        // as the bundle's tokenizer truncates it).
        let (status, headers, answer) =
            server.post_full("/rerank", &json!({"query": QUERY, "texts": texts, "raw_scores": true, "return_text": true}), None);
        assert_eq!(status, 200, "{head}: {answer}");
        // TEI's timing headers, as numbers; the tokens are the query's and
        // the texts' (the long one cut to the bundle's 24).
        for name in [
            "x-compute-time",
            "x-compute-characters",
            "x-compute-tokens",
            "x-total-time",
            "x-tokenization-time",
            "x-queue-time",
            "x-inference-time",
        ] {
            let v = headers.get(name).unwrap_or_else(|| panic!("{head}: no {name} header"));
            v.to_str().unwrap().parse::<u64>().unwrap_or_else(|_| panic!("{head}: {name} is {v:?}"));
        }
        assert_eq!(headers.get("x-compute-type").unwrap(), "cpu");
        let tokens: usize = std::iter::once(QUERY)
            .chain(texts.iter().map(String::as_str))
            .map(|t| scorer.tokenizer().truncate(scorer.tokenizer().ids_untruncated(t).unwrap(), false).len())
            .sum();
        assert_eq!(headers.get("x-compute-tokens").unwrap().to_str().unwrap(), tokens.to_string(), "{head}");
        assert_eq!(served(&answer, texts.len()), want, "{head}: raw scores differ from Scorer::rerank");
        let ranked: Vec<f32> = answer.as_array().unwrap().iter().map(|r| r["score"].as_f64().unwrap() as f32).collect();
        assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "{head}: not sorted: {answer}");
        let first = &answer[0];
        assert_eq!(first["text"], json!(texts[first["index"].as_u64().unwrap() as usize]));
        // Without raw_scores: the sigmoid of each, as documented; no text
        // unless asked.
        let (_, sigmoid) = server.post("/rerank", &json!({"query": QUERY, "texts": texts}));
        for (s, w) in served(&sigmoid, texts.len()).iter().zip(&want) {
            assert!((s - 1.0 / (1.0 + (-w).exp())).abs() <= 1e-6, "{head}: {s} vs sigmoid({w})");
        }
        assert!(sigmoid[0].get("text").is_none());
        // POST / is /rerank, as in TEI for a reranker.
        let (status, root) = server.post("/", &json!({"query": QUERY, "texts": texts, "raw_scores": true}));
        assert_eq!((status, served(&root, texts.len())), (200, want.clone()), "{head}");

        // Batched with other requests (other queries, other passages): the
        // chunks and blocks differ, so the sums may run in another order.
        let queries = ["a query about rivers", "money in a bank", "bread dough", QUERY, "tides and moons", "the sea shore"];
        let threads: Vec<_> = queries
            .iter()
            .cycle()
            .take(18)
            .map(|q| {
                let (base, q, texts) = (server.base.clone(), q.to_string(), texts.clone());
                std::thread::spawn(move || {
                    let mut r = Server::agent()
                        .post(&format!("{base}/rerank"))
                        .send_json(json!({"query": q, "texts": texts, "raw_scores": true}))
                        .unwrap();
                    (q, r.body_mut().read_json::<Value>().unwrap())
                })
            })
            .collect();
        for t in threads {
            let (q, answer) = t.join().unwrap();
            for (s, w) in served(&answer, texts.len()).iter().zip(in_process(&scorer, &q, &texts)) {
                assert!((s - w).abs() <= 1e-5 * w.abs().max(1.0), "{head}, {q}: batched {s} vs {w}");
            }
        }

        // /embed: the --embed-side encoder's pooled vectors, normalised.
        let (status, vectors_answer) = server.post("/embed", &json!({"inputs": texts}));
        assert_eq!(status, 200, "{vectors_answer}");
        let rep = scorer.encode_passages(&texts).unwrap();
        let expected = gradcache::app::retrieval::first_stage_vectors(&rep).unwrap();
        let expected: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(expected).unwrap();
        let got = vectors(&vectors_answer, texts.len(), 32);
        for (g, e) in got.iter().zip(&expected) {
            assert!(g.iter().zip(e).all(|(a, b)| (a - b).abs() <= 1e-6), "{head}: /embed differs from the first stage's vectors");
        }
        // /embed_all: token vectors for token encoders only.
        let (status, tokens) = server.post("/embed_all", &json!({"inputs": "the sea"}));
        if HeadConfig::named(head, 32, 0.1).unwrap().reads_tokens() {
            assert_eq!(status, 200, "{tokens}");
            let rows = tokens[0].as_array().unwrap();
            let ids = scorer.tokenizer().ids_untruncated("the sea").unwrap();
            assert_eq!((rows.len(), rows[0].as_array().unwrap().len()), (ids.len(), 32));
        } else {
            assert_eq!((status, tokens["error_type"].clone()), (422, json!("Validation")), "{tokens}");
        }
    }
}

#[test]
fn bad_input_gets_its_status_and_a_json_error_and_the_server_carries_on() {
    let _serial = common::serial();
    let dir = common::scratch("serve-bad");
    let (model, scorer) = bundle(&dir, "mlp");
    let server = Server::start(&model, &["--api-key", "sesame", "--max-client-batch-size", "8", "--payload-limit", "4000"]);
    let key = Some("sesame");
    let good = json!({"query": QUERY, "texts": ["the sea", "a bank"], "raw_scores": true});
    let still_fine = |why: &str| {
        assert_eq!(server.get("/health").0, 200, "after {why}");
        let (status, answer) = server.post_with("/rerank", &good, key);
        assert_eq!(status, 200, "after {why}: {answer}");
        assert_eq!(served(&answer, 2), in_process(&scorer, QUERY, &["the sea".to_string(), "a bank".to_string()]), "after {why}");
    };
    let expect = |why: &str, (status, body): (u16, Value), want_status: u16, want_type: &str| {
        assert_eq!(status, want_status, "{why}: {body}");
        assert_eq!(body["error_type"], json!(want_type), "{why}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{why}: {body}");
        still_fine(why);
    };

    // Authentication first: without the key, or with another, 401 with an
    // empty body (as TEI); the routes TEI leaves open stay open.
    for (why, given) in [("no key", None), ("wrong key", Some("open"))] {
        let (status, body) = server.post_with("/rerank", &good, given);
        assert_eq!((status, body), (401, json!("")), "{why}");
        still_fine(why);
    }
    for open in ["/health", "/ping", "/", "/metrics"] {
        assert_eq!(server.get(open).0, 200, "{open} needs no key");
    }
    assert_eq!(server.get("/info").0, 401, "/info needs the key");
    expect("empty texts", server.post_with("/rerank", &json!({"query": QUERY, "texts": []}), key), 400, "Empty");
    expect("an empty text", server.post_with("/rerank", &json!({"query": QUERY, "texts": ["a", ""]}), key), 400, "Empty");
    expect("an empty /embed input", server.post_with("/embed", &json!({"inputs": ""}), key), 400, "Empty");
    // A query of whitespace is a query, as in TEI.
    let (status, answer) = server.post_with("/rerank", &json!({"query": " ", "texts": ["a", "b"]}), key);
    assert_eq!(status, 200, "{answer}");
    served(&answer, 2);
    expect("too many texts", server.post_with("/rerank", &json!({"query": QUERY, "texts": vec!["a"; 9]}), key), 422, "Validation");
    expect("wrong types", server.post_with("/rerank", &json!({"query": 3, "texts": "a"}), key), 422, "Validation");
    expect("missing field", server.post_with("/rerank", &json!({"query": QUERY}), key), 422, "Validation");
    let long = "water ".repeat(100);
    expect(
        "too long, truncation off",
        server.post_with("/rerank", &json!({"query": QUERY, "texts": [long], "truncate": false}), key),
        422,
        "Validation",
    );
    expect("an unknown prompt", server.post_with("/embed", &json!({"inputs": "a", "prompt_name": "query"}), key), 422, "Validation");
    expect("too many dimensions", server.post_with("/embed", &json!({"inputs": "a", "dimensions": 33}), key), 422, "Validation");
    expect("empty inputs", server.post_with("/embed", &json!({"inputs": []}), key), 400, "Empty");

    // Unknown fields are ignored, as TEI ignores them.
    let (status, answer) = server.post_with("/rerank", &json!({"query": QUERY, "texts": ["the sea"], "top_n": 3}), key);
    assert_eq!(status, 200, "{answer}");

    // Bodies no client sends.
    let post = |body: &[u8]| {
        let head = format!("POST /rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        server.raw(&head, body)
    };
    let check_raw = |why: &str, (status, text): (u16, String), want: u16| {
        assert_eq!(status, want, "{why}: {text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{why}: not JSON: {text}"));
        assert_eq!(json["error_type"], json!("Validation"), "{why}: {text}");
        still_fine(why);
    };
    check_raw("malformed JSON", post(b"{\"query\": \"a\", \"texts\": [\"b\""), 400);
    check_raw("not UTF-8", post(b"{\"query\": \"\xff\xfe\", \"texts\": [\"b\"]}"), 400);
    check_raw("over the payload limit", post(json!({"query": QUERY, "texts": ["x".repeat(5000)]}).to_string().as_bytes()), 413);

    // A client that hangs up mid-request: the server answers the next one.
    {
        let mut stream = server.connect();
        stream.write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"query\": \"a\",").unwrap();
    }
    still_fine("a hang-up");
}

#[test]
fn over_the_concurrency_limit_requests_get_429_and_service_returns() {
    let _serial = common::serial();
    let dir = common::scratch("serve-limit");
    let (model, scorer) = bundle(&dir, "mlp");
    // 16 pairs in flight at most. With the model held, two requests of 8
    // texts take every permit (they are tokenized, so they hold them); a
    // third is refused whatever the machine's speed.
    let server = Server::start(&model, &["--max-concurrent-requests", "16", "--max-client-batch-size", "16"]);
    let texts: Vec<String> = (0..8).map(|i| format!("passage number {i} about the sea and rivers")).collect();
    let want = in_process(&scorer, QUERY, &texts);
    server.hold();
    let threads: Vec<_> =
        (0..2).map(|_| server.post_in_thread("/rerank", json!({"query": QUERY, "texts": texts, "raw_scores": true}))).collect();
    // Each request's query and texts tokenized: 2 × 9 inputs.
    server.wait_metric("te_request_input_length_count", |n| n >= 18.0);
    let (status, refused) = server.post("/rerank", &json!({"query": QUERY, "texts": ["one more"]}));
    assert_eq!((status, refused["error_type"].clone()), (429, json!("Overloaded")), "{refused}");
    server.release();
    for t in threads {
        let (status, answer) = t.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        for (s, w) in served(&answer, texts.len()).iter().zip(&want) {
            assert!((s - w).abs() <= 1e-5 * w.abs().max(1.0), "{s} vs {w}");
        }
    }
    // Load gone: full service again.
    let (status, answer) = server.post("/rerank", &json!({"query": QUERY, "texts": texts, "raw_scores": true}));
    assert_eq!((status, served(&answer, texts.len())), (200, want));
    assert_eq!(server.metric("te_request_failure{err=\"overloaded\"}"), 1.0);
}

/// A request for more texts than the concurrency limit could never be
/// served: the server refuses to start with such limits, naming the flag.
#[test]
fn limits_that_contradict_each_other_are_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradcache"))
        .args(["serve", "--model", "/nonexistent", "--port", "0", "--max-concurrent-requests", "8", "--max-client-batch-size", "9"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("--max-client-batch-size") && text.contains("--max-concurrent-requests"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_gradcache"))
        .args(["serve", "--model", "/nonexistent", "--header-read-timeout", "0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("header_read_timeout"), "{text}");
}

/// A model longer than the batch budget is clamped to it (TEI's rule):
/// /info says so, and a long text is cut to it, or refused without
/// truncation.
#[test]
fn an_input_length_over_the_batch_budget_is_clamped_to_it() {
    let _serial = common::serial();
    let dir = common::scratch("serve-clamp");
    let (model, _) = bundle(&dir, "mlp");
    let server = Server::start(&model, &["--max-batch-tokens", "10"]);
    let (_, info) = server.get("/info");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["max_input_length"], json!(10));
    // Without --served-model-name, the bundle folder's name, never a path.
    assert_eq!((info["model_id"].clone(), info["served_model_name"].clone()), (json!("model-mlp"), json!("model-mlp")));
    let (_, openai) = server.post("/v1/embeddings", &json!({"input": "the sea"}));
    assert_eq!(openai["model"], json!("model-mlp"));
    let long = "water and salt ".repeat(8);
    let (status, answer) = server.post("/rerank", &json!({"query": "q", "texts": [long.clone(), "the sea"]}));
    assert_eq!(status, 200, "{answer}");
    served(&answer, 2);
    let (status, error) = server.post("/rerank", &json!({"query": "q", "texts": [long], "truncate": false}));
    assert_eq!((status, error["error_type"].clone()), (422, json!("Validation")), "{error}");
    assert!(error["error"].as_str().unwrap().contains("less than 10 tokens"), "{error}");
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()).unwrap()
}

#[test]
fn under_load_every_answer_is_right_none_is_lost_and_memory_stays_flat() {
    let _serial = common::serial();
    let dir = common::scratch("serve-load");
    let (model, scorer) = bundle(&dir, "mlp");
    let server = Server::start(&model, &[]);
    let texts: Vec<String> = (0..4).map(|i| format!("short passage {i}")).collect();
    let queries: Vec<String> = (0..8).map(|i| format!("query number {i}")).collect();
    let want: Vec<Vec<f32>> = queries.iter().map(|q| in_process(&scorer, q, &texts)).collect();
    let embed_want: Vec<Vec<f32>> =
        Vec::<Vec<f32>>::try_from(gradcache::app::retrieval::first_stage_vectors(&scorer.encode_passages(&texts).unwrap()).unwrap())
            .unwrap();
    // 64 clients, each a fixed number of requests (a mix of /rerank and
    // /embed); every answer checked.
    let round = |per_client: usize| {
        let threads: Vec<_> = (0..64)
            .map(|c| {
                let (base, texts, queries, want, embed_want) =
                    (server.base.clone(), texts.clone(), queries.clone(), want.clone(), embed_want.clone());
                std::thread::spawn(move || {
                    let agent = Server::agent();
                    for i in 0..per_client {
                        let k = (c + i) % queries.len();
                        if i % 4 == 3 {
                            let got: Value = agent
                                .post(&format!("{base}/embed"))
                                .send_json(json!({"inputs": texts}))
                                .unwrap()
                                .body_mut()
                                .read_json()
                                .unwrap();
                            let got = vectors(&got, texts.len(), 32);
                            assert!(got.iter().flatten().zip(embed_want.iter().flatten()).all(|(a, b)| (a - b).abs() <= 1e-5));
                        } else {
                            let mut r = agent
                                .post(&format!("{base}/rerank"))
                                .send_json(json!({"query": queries[k], "texts": texts, "raw_scores": true}))
                                .unwrap();
                            assert_eq!(r.status().as_u16(), 200);
                            let answer: Value = r.body_mut().read_json().unwrap();
                            for (s, w) in served(&answer, texts.len()).iter().zip(&want[k]) {
                                assert!((s - w).abs() <= 1e-5 * w.abs().max(1.0), "{s} vs {w}");
                            }
                        }
                    }
                    per_client
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum::<usize>()
    };
    // Ten rounds of 1,024 requests: bounded in count, no clock.
    assert_eq!(round(16), 1024);
    let after_first_thousand = rss_kb(server.pid());
    let mut done = 1024;
    for _ in 1..10 {
        done += round(16);
    }
    assert_eq!(done, 10_240);
    let after_all = rss_kb(server.pid());
    assert!(
        after_all <= after_first_thousand + 16 * 1024,
        "RSS grew from {after_first_thousand} kB to {after_all} kB over {done} requests"
    );
    let (_, metrics) = server.get("/metrics");
    let successes: f64 =
        metrics.lines().filter(|l| l.starts_with("te_request_success")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert!(successes >= done as f64, "{successes} successes counted for {done} requests:\n{metrics}");
    for name in [
        "te_request_count",
        "te_batch_next_size",
        "te_batch_next_tokens",
        "te_queue_size",
        "te_request_queue_duration",
        "te_request_inference_duration",
        "te_request_tokenization_duration",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn sigterm_answers_what_is_in_flight_and_exits_zero() {
    let _serial = common::serial();
    let dir = common::scratch("serve-stop");
    let (model, _) = bundle(&dir, "interaction");
    let mut server = Server::start(&model, &["--max-batch-requests", "4"]);
    let texts: Vec<String> = (0..32).map(|i| format!("a passage about the sea, number {i}, with some more words in it")).collect();
    // The model is held until after the signal: every request is still in
    // flight when it comes.
    server.hold();
    let threads: Vec<_> = (0..16).map(|_| server.post_in_thread("/rerank", json!({"query": QUERY, "texts": texts}))).collect();
    // Every request is in (a connection made after the signal would
    // rightly be refused).
    server.wait_metric("te_request_count{method=\"batch\"}", |n| n >= 16.0);
    server.signal(libc::SIGTERM);
    server.wait_line("stopping: signal");
    server.release();
    for t in threads {
        let (status, answer) = t.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        served(&answer, texts.len());
    }
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
}

#[test]
fn queued_work_of_a_client_that_hung_up_is_dropped() {
    let _serial = common::serial();
    let dir = common::scratch("serve-drop");
    let (model, _) = bundle(&dir, "interaction");
    // One pair per batch; the model held, so nothing runs until released.
    let server = Server::start(&model, &["--max-batch-requests", "1"]);
    server.hold();
    let texts: Vec<String> = (0..4).map(|i| format!("a passage about the sea, number {i}")).collect();
    let first = {
        let (base, texts) = (server.base.clone(), texts.clone());
        std::thread::spawn(move || {
            Server::agent().post(&format!("{base}/rerank")).send_json(json!({"query": QUERY, "texts": texts})).unwrap().status().as_u16()
        })
    };
    // The first request's batches fill the model's hands and its channel;
    // the batcher waits on the third.
    server.wait_metric("te_batch_next_size_count", |n| n >= 3.0);
    // A client that queues 16 pairs behind it, then hangs up.
    let body = json!({"query": "bread", "texts": vec!["flour and water"; 16]}).to_string();
    let mut impatient = server.connect();
    impatient
        .write_all(
            format!("POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        )
        .unwrap();
    server.wait_metric("te_queue_size", |n| n >= 16.0);
    drop(impatient);
    // The server has seen the hang-up and dropped the request's future.
    server.wait_metric("te_request_failure{err=\"cancelled\"}", |n| n >= 1.0);
    server.release();
    assert_eq!(first.join().unwrap(), 200);
    // Each of the 16 queued pairs was skipped, none run.
    assert_eq!(server.metric("te_request_failure{err=\"dropped\"}"), 16.0);
    assert_eq!(server.metric("te_batch_next_size_count"), 4.0, "the abandoned pairs were batched");
    let (status, answer) = server.post("/rerank", &json!({"query": QUERY, "texts": ["the sea"]}));
    assert_eq!(status, 200, "{answer}");
    served(&answer, 1);
}

/// `/health` asks the model thread: a held (stuck) thread makes it 503
/// after the health timeout, and 200 again once it answers; a thread that
/// dies stops the server with exit code 3, without any signal.
#[test]
fn health_sees_a_stuck_model_and_a_dead_one_stops_the_server_with_code_3() {
    let _serial = common::serial();
    let dir = common::scratch("serve-health");
    let (model, _) = bundle(&dir, "mlp");
    let mut server = Server::start(&model, &["--health-timeout", "1"]);
    assert_eq!(server.get("/health"), (200, String::new()));
    server.hold();
    let (status, body) = server.get("/health");
    assert_eq!(status, 503, "a held model answered the health check");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"error": "unhealthy", "error_type": "Unhealthy"}));
    server.release();
    assert_eq!(server.get("/health").0, 200);

    server.signal(libc::SIGUSR2);
    server.wait_line("fault: model will panic");
    let (status, error) = server.post("/rerank", &json!({"query": QUERY, "texts": ["the sea"]}));
    assert!(matches!(status, 424 | 503), "{status}: {error}");
    assert!(matches!(error["error_type"].as_str(), Some("Backend" | "Unhealthy")), "{error}");
    server.wait_line("stopping: the model thread panicked");
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(3), "{status:?}");
}

#[test]
fn info_describes_the_model_and_the_limits() {
    let _serial = common::serial();
    let dir = common::scratch("serve-info");
    let (model, _) = bundle(&dir, "max_sim");
    let server = Server::start(&model, &["--max-batch-tokens", "2048", "--served-model-name", "tiny"]);
    let (status, text) = server.get("/info");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["model_type"]["reranker"]["head"], json!("max_sim"));
    assert_eq!(info["model_type"]["reranker"]["token_encoder"], json!(true));
    assert_eq!(
        (info["max_input_length"].clone(), info["max_batch_tokens"].clone(), info["served_model_name"].clone()),
        (json!(24), json!(2048), json!("tiny"))
    );
    assert_eq!(info["max_client_batch_size"], json!(32));
    let (status, answer) = server.post("/v1/embeddings", &json!({"input": ["the sea", "a bank"], "model": "tiny"}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["object"].clone(), answer["model"].clone(), answer["data"][1]["index"].clone()),
        (json!("list"), json!("tiny"), json!(1))
    );
    let (_, b64) = server.post("/v1/embeddings", &json!({"input": "the sea", "encoding_format": "base64"}));
    let (_, floats) = server.post("/v1/embeddings", &json!({"input": "the sea"}));
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let floats: Vec<f32> = serde_json::from_value(floats["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(decoded, floats);
    let (status, error) = server.post("/v1/embeddings", &json!({"input": []}));
    assert_eq!((status, error["type"].clone(), error["code"].clone()), (400, json!("Empty"), json!(400)), "{error}");
}

/// Whether the server has closed this socket (it reads EOF or a reset);
/// false while it is open and silent.
fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let closed = match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

fn wait_closed(stream: &mut std::net::TcpStream) {
    let started = Instant::now();
    while !closed_by_server(stream) {
        assert!(started.elapsed() < EVENT_DEADLINE, "a stalled connection was never closed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Slow or hostile clients cannot hold the server: 300 connections that
/// stall (half in their head, half in their body) do not keep `/health`
/// or a correct `/rerank` from being answered while they are open, and
/// SIGTERM with them still connected exits with code 0 at the shutdown
/// deadline, cutting them, instead of waiting for them. With a cap of 4
/// connections, a fifth is served only once the header timeout has cut a
/// stalled one; a body that stalls gets 408 after the body timeout.
#[test]
fn stalled_connections_are_cut_by_the_timeouts_and_do_not_block_service() {
    let _serial = common::serial();
    let dir = common::scratch("serve-stall");
    let (model, scorer) = bundle(&dir, "mlp");
    // Timeouts far longer than the phase: what cuts these is the stop.
    let mut server = Server::start(&model, &["--header-read-timeout", "600", "--body-read-timeout", "600", "--shutdown-timeout", "2"]);
    let mut stalled: Vec<std::net::TcpStream> = (0..300)
        .map(|i| {
            let mut s = server.connect();
            if i % 2 == 0 {
                s.write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Ty").unwrap();
            } else {
                s.write_all(
                    b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"query\": ",
                )
                .unwrap();
            }
            s
        })
        .collect();
    let started = Instant::now();
    assert_eq!(server.get("/health").0, 200);
    let (status, answer) = server.post("/rerank", &json!({"query": QUERY, "texts": ["the sea", "a bank"], "raw_scores": true}));
    assert_eq!((status, served(&answer, 2)), (200, in_process(&scorer, QUERY, &["the sea".to_string(), "a bank".to_string()])));
    eprintln!("/health and /rerank beside 300 stalled connections: {:.3} s", started.elapsed().as_secs_f64());
    let open = stalled.iter_mut().map(closed_by_server).filter(|closed| !closed).count();
    assert_eq!(open, 300, "stalled connections were closed before the stop");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    for s in stalled.iter_mut() {
        wait_closed(s);
    }

    // A cap of 4 connections, held by 4 clients stalled in their heads: a
    // fifth waits in the backlog until the header timeout cuts one.
    let mut server = Server::start(&model, &["--max-connections", "4", "--header-read-timeout", "2", "--body-read-timeout", "2"]);
    let mut stalled: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"GET /hea").unwrap();
            s
        })
        .collect();
    assert_eq!(server.get("/health").0, 200);
    assert!(stalled.iter_mut().any(closed_by_server), "a fifth connection was served while four held every slot");
    drop(stalled);
    // A body that stalls: 408 once the body timeout passes.
    let mut slow = server.connect();
    slow.write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\": ")
        .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
}

fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()).unwrap()
}

/// A 2 MB text is cut by characters before it is tokenized (or refused
/// without truncation), and a burst of clients that send one and hang up
/// leaves the process within its bound: at most `--tokenization-workers`
/// blocking threads, and memory within 64 MB of where it started.
#[test]
fn tokenization_is_bounded_for_huge_texts_and_hang_ups() {
    let _serial = common::serial();
    let dir = common::scratch("serve-tokens");
    let (model, scorer) = bundle(&dir, "mlp");
    let mut server = Server::start(&model, &["--tokenization-workers", "2", "--payload-limit", "3000000"]);
    let threads_before = threads_of(server.pid());
    let huge = "the river meets the sea ".repeat(80_000); // 1.9 MB
    let (status, error) = server.post("/rerank", &json!({"query": QUERY, "texts": [huge.clone()], "truncate": false}));
    assert_eq!((status, error["error_type"].clone()), (422, json!("Validation")), "{error}");
    assert!(error["error"].as_str().unwrap().contains("characters"), "{error}");
    // Cut, it scores as its first 24 tokens do.
    let (status, answer) = server.post("/rerank", &json!({"query": QUERY, "texts": [huge.clone()], "raw_scores": true}));
    assert_eq!(status, 200, "{answer}");
    let head: String = huge.chars().take(24 * 16).collect();
    assert_eq!(served(&answer, 1), in_process(&scorer, QUERY, &[head]));

    // Bursts of 64 clients that each send a 1.9 MB body and hang up. The
    // bound: at most --tokenization-workers (2) blocking threads ever, and
    // memory above the start at most three copies of one burst's bodies
    // (each body is buffered, parsed and cut, never tokenized whole).
    // Tokenizing even one such text whole takes more than that bound's
    // share (the first check above shows none is).
    let rss_start = rss_kb(server.pid());
    let body = json!({"query": QUERY, "texts": vec![huge.clone(); 1]}).to_string();
    let bound_kb = 3 * 64 * body.len() as u64 / 1024;
    for _ in 0..6 {
        let clients: Vec<_> = (0..64)
            .map(|_| {
                let mut s = server.connect();
                s.write_all(
                    format!("POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())
                        .as_bytes(),
                )
                .unwrap();
                s.write_all(body.as_bytes()).unwrap();
                s
            })
            .collect();
        drop(clients);
        let (status, _) = server.post("/rerank", &json!({"query": QUERY, "texts": ["the sea"]}));
        assert_eq!(status, 200);
        let threads = threads_of(server.pid());
        assert!(threads <= threads_before + 2, "{threads} threads, {threads_before} before the bursts");
        let rss = rss_kb(server.pid());
        assert!(rss <= rss_start + bound_kb, "RSS grew from {rss_start} kB to {rss} kB, over the {bound_kb} kB bound");
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
}

/// Token ids as TEI takes them (LangChain's OpenAI embeddings send them):
/// on /embed, /embed_all and /v1/embeddings, the same vectors as the text
/// they tokenize; an id outside the vocabulary is a 422, not a crash.
#[test]
fn token_id_inputs_embed_as_their_text_does() {
    let _serial = common::serial();
    let dir = common::scratch("serve-ids");
    let (model, scorer) = bundle(&dir, "max_sim");
    let server = Server::start(&model, &[]);
    let ids: Vec<i64> = scorer.tokenizer().ids_untruncated("the sea").unwrap();
    let (_, by_text) = server.post("/embed", &json!({"inputs": ["the sea"]}));
    let (status, by_ids) = server.post("/embed", &json!({"inputs": ids}));
    assert_eq!(status, 200, "{by_ids}");
    assert_eq!(vectors(&by_ids, 1, 32), vectors(&by_text, 1, 32));
    let (status, mixed) = server.post("/embed", &json!({"inputs": [json!(ids), json!("the sea")]}));
    assert_eq!(status, 200, "{mixed}");
    let mixed = vectors(&mixed, 2, 32);
    assert_eq!(mixed[0], mixed[1]);
    let (_, all_text) = server.post("/embed_all", &json!({"inputs": "the sea"}));
    let (status, all_ids) = server.post("/embed_all", &json!({"inputs": [ids]}));
    assert_eq!(status, 200, "{all_ids}");
    assert_eq!(all_ids, all_text);
    assert_eq!(all_ids[0].as_array().unwrap().len(), ids.len());
    let (status, openai) = server.post("/v1/embeddings", &json!({"input": [ids]}));
    assert_eq!(status, 200, "{openai}");
    let openai_vector: Vec<f32> = serde_json::from_value(openai["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(openai_vector, vectors(&by_text, 1, 32)[0]);
    assert_eq!(openai["usage"]["prompt_tokens"], json!(ids.len()));
    let vocab = scorer.tokenizer().vocab_size() as u64;
    for route in ["/embed", "/embed_all"] {
        let (status, error) = server.post(route, &json!({"inputs": [2, vocab, 3]}));
        assert_eq!((status, error["error_type"].clone()), (422, json!("Validation")), "{route}: {error}");
    }
    let (status, error) = server.post("/v1/embeddings", &json!({"input": [[2, vocab]]}));
    assert_eq!((status, error["type"].clone()), (422, json!("Validation")), "{error}");
    assert_eq!(server.get("/health").0, 200);
}

/// TEI's metric names and labels: requests by `method="single"|"batch"`,
/// failures by `err`.
#[test]
fn metrics_carry_teis_names_and_labels() {
    let _serial = common::serial();
    let dir = common::scratch("serve-metrics");
    let (model, _) = bundle(&dir, "mlp");
    let server = Server::start(&model, &["--max-client-batch-size", "2"]);
    assert_eq!(server.post("/rerank", &json!({"query": QUERY, "texts": ["a"]})).0, 200);
    assert_eq!(server.post("/embed", &json!({"inputs": ["a", "b"]})).0, 200);
    assert_eq!(server.post("/embed", &json!({"inputs": ["a", "b", "c"]})).0, 422);
    let (_, text) = server.get("/metrics");
    assert_eq!(metric_in(&text, "te_request_count{method=\"single\"}"), 1.0, "{text}");
    assert_eq!(metric_in(&text, "te_request_count{method=\"batch\"}"), 2.0, "{text}");
    assert_eq!(metric_in(&text, "te_request_success{method=\"batch\"}"), 1.0, "{text}");
    assert_eq!(metric_in(&text, "te_request_failure{err=\"batch_size\"}"), 1.0, "{text}");
    assert_eq!(metric_in(&text, "te_embed_success"), 2.0, "{text}");
    assert_eq!(metric_in(&text, "te_predict_success"), 1.0, "{text}");
}

/// Request bodies from a generator, a few thousand in all: JSON of every
/// shape on every route, good bodies with one field replaced by anything,
/// and raw bytes. Each answer is 200 with a well-formed body or a
/// documented status (400, 413, 422) with TEI's JSON error (OpenAI's on
/// /v1/embeddings); none is 5xx; and after each, `/health` and a correct
/// `/rerank` still answer.
#[test]
fn generated_bad_input_gets_documented_statuses_and_never_breaks_the_server() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let _serial = common::serial();
    let dir = common::scratch("serve-fuzz");
    let (model, scorer) = bundle(&dir, "max_sim");
    let server = Server::start(&model, &["--max-client-batch-size", "8", "--payload-limit", "20000"]);
    let good_texts = ["the sea".to_string(), "a bank".to_string()];
    let want = in_process(&scorer, QUERY, &good_texts);
    let agent = Server::agent();

    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u32..40_000).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("")),
        Just(Value::from(" ")),
    ];
    let json = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("query".to_string()),
                        Just("texts".to_string()),
                        Just("inputs".to_string()),
                        Just("input".to_string()),
                        Just("truncate".to_string()),
                        Just("dimensions".to_string()),
                        Just("normalize".to_string()),
                        Just("truncation_direction".to_string()),
                        Just("encoding_format".to_string()),
                        Just("raw_scores".to_string()),
                        Just("return_text".to_string()),
                        Just("prompt_name".to_string()),
                        ".{0,6}".prop_map(String::from)
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    });
    let routes = prop_oneof![Just("/rerank"), Just("/"), Just("/embed"), Just("/embed_all"), Just("/v1/embeddings")];
    let good = |route: &str| match route {
        "/rerank" | "/" => json!({"query": QUERY, "texts": ["the sea", "a bank"], "raw_scores": true, "truncate": true}),
        "/v1/embeddings" => json!({"input": ["the sea"], "encoding_format": "float", "dimensions": 8}),
        _ => json!({"inputs": ["the sea"], "truncate": true, "normalize": true, "truncation_direction": "right"}),
    };
    // What is sent: a body and whether it is JSON text.
    let body = prop_oneof![
        3 => json.clone().prop_map(|v| v.to_string().into_bytes()),
        3 => (routes.clone(), json.clone(), 0usize..8).prop_map(move |(route, v, k)| {
            let mut g = good(route);
            let keys: Vec<String> = g.as_object().unwrap().keys().cloned().collect();
            g[&keys[k % keys.len()]] = v;
            g.to_string().into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    let mut runner = TestRunner::new(Config { cases: 3000, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(routes, body), |(route, body)| {
        let mut r = agent.post(&format!("{}{route}", server.base)).header("Content-Type", "application/json").send(&body[..]).unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let shown = || format!("{route} {:?} -> {status} {text}", String::from_utf8_lossy(&body));
        prop_assert!(matches!(status, 200 | 400 | 413 | 422), "undocumented status: {}", shown());
        let answer: Value = serde_json::from_str(&text).map_err(|_| TestCaseError::fail(format!("not JSON: {}", shown())))?;
        if status == 200 {
            match route {
                "/rerank" | "/" => {
                    let ranks = answer.as_array().ok_or_else(|| TestCaseError::fail(shown()))?;
                    let mut seen: Vec<u64> = ranks.iter().filter_map(|r| r["index"].as_u64()).collect();
                    seen.sort_unstable();
                    seen.dedup();
                    prop_assert!(!ranks.is_empty() && seen.len() == ranks.len(), "{}", shown());
                    prop_assert!(ranks.iter().all(|r| r["score"].as_f64().is_some_and(f64::is_finite)), "{}", shown());
                }
                "/v1/embeddings" => prop_assert!(answer["data"].as_array().is_some_and(|d| !d.is_empty()), "{}", shown()),
                _ => {
                    let rows = answer.as_array().ok_or_else(|| TestCaseError::fail(shown()))?;
                    prop_assert!(!rows.is_empty() && rows.iter().all(|r| r.as_array().is_some_and(|v| !v.is_empty())), "{}", shown());
                }
            }
        } else if route == "/v1/embeddings" {
            prop_assert!(answer["message"].is_string() && answer["code"] == json!(status) && answer["type"].is_string(), "{}", shown());
        } else {
            let kind = answer["error_type"].as_str().unwrap_or_default();
            prop_assert!(answer["error"].is_string() && matches!(kind, "Validation" | "Tokenizer" | "Empty"), "{}", shown());
        }
        prop_assert_eq!(server.get("/health").0, 200, "after {}", shown());
        let (status, answer) = server.post("/rerank", &json!({"query": QUERY, "texts": good_texts, "raw_scores": true}));
        prop_assert_eq!(status, 200);
        prop_assert_eq!(served(&answer, 2), want.clone(), "after {}", shown());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The answer checks cannot pass on nothing: a duplicate index, a missing
/// answer, an empty list or a short vector each fail them.
#[test]
fn the_answer_checks_fail_on_duplicate_missing_or_empty_answers() {
    let fails = |f: &(dyn Fn() + std::panic::RefUnwindSafe)| std::panic::catch_unwind(f).is_err();
    assert!(fails(&|| {
        served(&json!([{"index": 0, "score": 1.0}, {"index": 0, "score": 0.5}]), 2);
    }));
    assert!(fails(&|| {
        served(&json!([{"index": 1, "score": 1.0}]), 2);
    }));
    assert!(fails(&|| {
        served(&json!([]), 1);
    }));
    assert!(fails(&|| {
        vectors(&json!([[], [1.0, 2.0]]), 2, 2);
    }));
    assert!(fails(&|| {
        vectors(&json!([[1.0, 2.0]]), 2, 2);
    }));
    assert_eq!(served(&json!([{"index": 1, "score": 2.0}, {"index": 0, "score": 1.0}]), 2), vec![1.0, 2.0]);
}
