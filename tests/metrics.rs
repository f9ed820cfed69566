//! Ranking metrics on hand-computed cases.

use gradcache::app::metrics::{disambiguation_accuracy, retrieval_metrics};
use tch::Tensor;

fn scores(rows: &[&[f64]]) -> Tensor {
    let flat: Vec<f64> = rows.concat();
    Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
}

#[test]
fn retrieval_metrics_by_hand() {
    // Query 0: relevant doc 2 ranks 1st. Query 1: relevant doc 0 ranks 3rd
    // (order 1, 2, 0). Query 2: doc 1 (grade 2) ranks 2nd, doc 2 (grade 1) 1st.
    let s = scores(&[&[0.1, 0.2, 0.9], &[0.1, 0.8, 0.5], &[0.0, 0.5, 0.7]]);
    let rel = vec![vec![(2, 1)], vec![(0, 1)], vec![(1, 2), (2, 1)]];
    let m = retrieval_metrics(&s, &rel).unwrap();
    assert!((m.top1 - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(m.top5, 1.0);
    assert!((m.mrr10 - (1.0 + 1.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
    // nDCG: q0 = 1; q1 = (1/log2 4) / 1 = 0.5;
    // q2: DCG = 1/log2 2 + 3/log2 3, IDCG = 3/log2 2 + 1/log2 3.
    let q2 = (1.0 + 3.0 / 3f64.log2()) / (3.0 + 1.0 / 3f64.log2());
    assert!((m.ndcg10 - (1.0 + 0.5 + q2) / 3.0).abs() < 1e-12, "{}", m.ndcg10);
}

#[test]
fn a_relevant_document_beyond_rank_ten_earns_nothing_in_mrr() {
    let mut row = vec![1.0; 12];
    row[11] = 0.0; // the relevant one ranks 12th
    let s = scores(&[&row]);
    let m = retrieval_metrics(&s, &[vec![(11, 1)]]).unwrap();
    assert_eq!((m.top1, m.top5, m.top20, m.mrr10, m.ndcg10), (0.0, 0.0, 1.0, 0.0, 0.0));
}

#[test]
fn disambiguation_only_compares_candidates() {
    // Query 0: doc 0 scores highest overall, but only 1 and 2 are candidates.
    let s = scores(&[&[9.0, 0.5, 0.4], &[0.0, 0.3, 0.6]]);
    let acc = disambiguation_accuracy(&s, &[vec![1, 2], vec![1, 2]], &[1, 1]).unwrap();
    assert_eq!(acc, 0.5);
    assert!(disambiguation_accuracy(&s, &[vec![1, 2], vec![1, 2]], &[0, 1]).is_err(), "gold must be a candidate");
    assert!(retrieval_metrics(&s, &[vec![(5, 1)], vec![(0, 1)]]).is_err(), "document out of range");
}
