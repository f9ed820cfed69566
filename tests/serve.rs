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
use gradcache::models::encoders::{TextEncoderConfig, Pooling};
use gradcache::models::heads::HeadConfig;
use gradcache::{Layout, Scorer};
use serde_json::{json, Value};

/// A bundle with a tiny random BERT and `head` (`mlp`, `max_sim` or
/// `interaction`), its weights moved off their initialisation so that the
/// residual gate is open. Returns its folder and the model in process.
fn bundle(dir: &Path, head: &str) -> (PathBuf, Scorer) {
    let bert = dir.join("bert");
    let model = if bert.join("config.json").is_file() { gradcache::models::pretrained::ModelDir::open(&bert).unwrap() } else { common::tiny_bert_folder(&bert, 32, 4, 1, 3) };
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
    (out, scorer)
}

/// A server process; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gradcache"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0", "--device", "cpu"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address in {line:?}")).to_string();
        let server = Server { child, base };
        let started = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(started.elapsed() < Duration::from_secs(120), "the server did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().new_agent()
    }

    fn get(&self, path: &str) -> (u16, String) {
        match Self::agent().get(&format!("{}{path}", self.base)).call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, body, None)
    }

    fn post_with(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut request = Self::agent().post(&format!("{}{path}", self.base));
        if let Some(k) = key {
            request = request.header("Authorization", &format!("Bearer {k}"));
        }
        let mut r = request.send_json(body).unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A raw HTTP/1.1 request (for bodies no client library sends).
    fn raw(&self, head: &str, body: &[u8]) -> (u16, String) {
        let address = self.base.strip_prefix("http://").unwrap();
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, answer)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
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

/// The scores of a `/rerank` answer, in the texts' order.
fn served(answer: &Value, n: usize) -> Vec<f32> {
    let mut scores = vec![f32::NAN; n];
    for r in answer.as_array().unwrap() {
        scores[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap() as f32;
    }
    scores
}

#[test]
fn served_scores_equal_the_scorer_for_every_head_family() {
    let _serial = common::serial();
    let dir = common::scratch("serve-equal");
    for head in ["mlp", "max_sim", "interaction"] {
        let (model, scorer) = bundle(&dir, head);
        let server = Server::start(&model, &[]);
        let texts = texts();
        let want = in_process(&scorer, QUERY, &texts);
        // Alone, a request is cut into the same chunks and blocks as
        // Scorer::rerank cuts it: the same bits (the long text is truncated
        // as the bundle's tokenizer truncates it).
        let (status, answer) = server.post("/rerank", &json!({"query": QUERY, "texts": texts, "raw_scores": true, "return_text": true}));
        assert_eq!(status, 200, "{head}: {answer}");
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
                    let mut r = Server::agent().post(&format!("{base}/rerank")).send_json(json!({"query": q, "texts": texts, "raw_scores": true})).unwrap();
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
        let (status, vectors) = server.post("/embed", &json!({"inputs": texts}));
        assert_eq!(status, 200, "{vectors}");
        let rep = scorer.encode_passages(&texts).unwrap();
        let expected = gradcache::app::retrieval::first_stage_vectors(&rep).unwrap();
        let expected: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(expected).unwrap();
        let got: Vec<Vec<f32>> = serde_json::from_value(vectors).unwrap();
        assert_eq!(got.len(), texts.len());
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

    // Authentication first: without the key, or with another, 401.
    expect("no key", server.post("/rerank", &good), 401, "Unauthorized");
    expect("wrong key", server.post_with("/rerank", &good, Some("open")), 401, "Unauthorized");
    expect("empty texts", server.post_with("/rerank", &json!({"query": QUERY, "texts": []}), key), 400, "Empty");
    expect("empty query", server.post_with("/rerank", &json!({"query": " ", "texts": ["a"]}), key), 422, "Validation");
    expect("too many texts", server.post_with("/rerank", &json!({"query": QUERY, "texts": vec!["a"; 9]}), key), 422, "Validation");
    expect("wrong types", server.post_with("/rerank", &json!({"query": 3, "texts": "a"}), key), 422, "Validation");
    expect("missing field", server.post_with("/rerank", &json!({"query": QUERY}), key), 422, "Validation");
    let long = "water ".repeat(100);
    expect("too long, truncation off", server.post_with("/rerank", &json!({"query": QUERY, "texts": [long], "truncate": false}), key), 422, "Validation");
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
        let address = server.base.strip_prefix("http://").unwrap();
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"query\": \"a\",").unwrap();
    }
    still_fine("a hang-up");
}

#[test]
fn over_the_concurrency_limit_requests_get_429_and_service_returns() {
    let _serial = common::serial();
    let dir = common::scratch("serve-limit");
    let (model, scorer) = bundle(&dir, "mlp");
    // 16 pairs in flight at most; 24 clients each send 8 texts at once.
    let server = Server::start(&model, &["--max-concurrent-requests", "16"]);
    let texts: Vec<String> = (0..8).map(|i| format!("passage number {i} about the sea and rivers")).collect();
    let want = in_process(&scorer, QUERY, &texts);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(24));
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let (base, texts, barrier) = (server.base.clone(), texts.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut r = Server::agent().post(&format!("{base}/rerank")).send_json(json!({"query": QUERY, "texts": texts, "raw_scores": true})).unwrap();
                (r.status().as_u16(), r.body_mut().read_json::<Value>().unwrap())
            })
        })
        .collect();
    let (mut ok, mut overloaded) = (0, 0);
    for t in threads {
        match t.join().unwrap() {
            (200, answer) => {
                ok += 1;
                for (s, w) in served(&answer, texts.len()).iter().zip(&want) {
                    assert!((s - w).abs() <= 1e-5 * w.abs().max(1.0));
                }
            }
            (429, e) => {
                overloaded += 1;
                assert_eq!(e["error_type"], json!("Overloaded"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ok >= 2 && overloaded >= 1, "{ok} answered, {overloaded} refused");
    // Load gone: full service again.
    let (status, answer) = server.post("/rerank", &json!({"query": QUERY, "texts": texts, "raw_scores": true}));
    assert_eq!((status, served(&answer, texts.len())), (200, want));
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("te_request_failure{err=\"overloaded\"}"), "{metrics}");
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
    let embed_want: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(gradcache::app::retrieval::first_stage_vectors(&scorer.encode_passages(&texts).unwrap()).unwrap()).unwrap();
    // 64 clients, each a fixed number of requests (a mix of /rerank and
    // /embed); every answer checked.
    let round = |per_client: usize| {
        let threads: Vec<_> = (0..64)
            .map(|c| {
                let (base, texts, queries, want, embed_want) = (server.base.clone(), texts.clone(), queries.clone(), want.clone(), embed_want.clone());
                std::thread::spawn(move || {
                    let agent = Server::agent();
                    for i in 0..per_client {
                        let k = (c + i) % queries.len();
                        if i % 4 == 3 {
                            let got: Vec<Vec<f32>> = agent.post(&format!("{base}/embed")).send_json(json!({"inputs": texts})).unwrap().body_mut().read_json().unwrap();
                            assert!(got.iter().flatten().zip(embed_want.iter().flatten()).all(|(a, b)| (a - b).abs() <= 1e-5));
                        } else {
                            let mut r = agent.post(&format!("{base}/rerank")).send_json(json!({"query": queries[k], "texts": texts, "raw_scores": true})).unwrap();
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
    let started = Instant::now();
    assert_eq!(round(16), 1024);
    let after_first_thousand = rss_kb(server.pid());
    let mut done = 1024;
    while done < 10_240 && started.elapsed() < Duration::from_secs(600) {
        done += round(16);
    }
    assert!(done >= 10_240, "only {done} requests in 10 minutes");
    let after_all = rss_kb(server.pid());
    assert!(after_all <= after_first_thousand + 16 * 1024, "RSS grew from {after_first_thousand} kB to {after_all} kB over {done} requests");
    let (_, metrics) = server.get("/metrics");
    let successes: f64 = metrics.lines().filter(|l| l.starts_with("te_request_success")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert!(successes >= done as f64, "{successes} successes counted for {done} requests:\n{metrics}");
    for name in ["te_request_count", "te_batch_next_size", "te_batch_next_tokens", "te_queue_size", "te_request_queue_duration", "te_request_inference_duration", "te_request_tokenization_duration"] {
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
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (base, texts) = (server.base.clone(), texts.clone());
            std::thread::spawn(move || {
                let mut r = Server::agent().post(&format!("{base}/rerank")).send_json(json!({"query": QUERY, "texts": texts})).unwrap();
                (r.status().as_u16(), r.body_mut().read_json::<Value>().unwrap(), Instant::now())
            })
        })
        .collect();
    // Once every request is in (a connection made after the signal would
    // rightly be refused) and batches are running, stop it.
    let started = Instant::now();
    let counted = |metrics: &str| metrics.lines().find(|l| l.starts_with("te_request_count{method=\"rerank\"}")).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0);
    loop {
        let (_, metrics) = server.get("/metrics");
        if counted(&metrics) >= 16.0 && metrics.contains("te_batch_next_size") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the requests did not all arrive:\n{metrics}");
        std::thread::sleep(Duration::from_millis(5));
    }
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let mut answered_after = 0;
    for t in threads {
        let (status, answer, at) = t.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer.as_array().unwrap().len(), texts.len());
        answered_after += usize::from(at > stopped);
    }
    // Requests were still in flight when the signal came, and were answered.
    assert!(answered_after > 0, "every request was done before SIGTERM: the test did not test a stop");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn queued_work_of_a_client_that_hung_up_is_dropped() {
    let _serial = common::serial();
    let dir = common::scratch("serve-drop");
    let (model, _) = bundle(&dir, "interaction");
    // One pair per batch: a long request holds the model while others wait.
    let server = Server::start(&model, &["--max-batch-requests", "1", "--max-client-batch-size", "256"]);
    let texts: Vec<String> = (0..256).map(|i| format!("a passage about the sea, number {i}, with some more words in it")).collect();
    let long = {
        let (base, texts) = (server.base.clone(), texts.clone());
        std::thread::spawn(move || Server::agent().post(&format!("{base}/rerank")).send_json(json!({"query": QUERY, "texts": texts})).unwrap().status().as_u16())
    };
    std::thread::sleep(Duration::from_millis(100));
    // A client that gives up while its pairs wait behind the long request.
    let impatient = ureq::Agent::config_builder().timeout_global(Some(Duration::from_millis(50))).build().new_agent();
    assert!(impatient.post(&format!("{}/rerank", server.base)).send_json(json!({"query": "bread", "texts": vec!["flour and water"; 16]})).is_err(), "the model answered 16 pairs behind 256 within 50 ms");
    assert_eq!(long.join().unwrap(), 200);
    let (_, metrics) = server.get("/metrics");
    let dropped: f64 = metrics.lines().find(|l| l.starts_with("te_request_failure{err=\"dropped\"}")).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0);
    assert!(dropped >= 1.0, "no dropped entry counted:\n{metrics}");
    assert_eq!(server.post("/rerank", &json!({"query": QUERY, "texts": ["the sea"]})).0, 200);
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
    assert_eq!((info["max_input_length"].clone(), info["max_batch_tokens"].clone(), info["served_model_name"].clone()), (json!(24), json!(2048), json!("tiny")));
    assert_eq!(info["max_client_batch_size"], json!(32));
    let (status, answer) = server.post("/v1/embeddings", &json!({"input": ["the sea", "a bank"], "model": "tiny"}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["object"].clone(), answer["model"].clone(), answer["data"][1]["index"].clone()), (json!("list"), json!("tiny"), json!(1)));
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
