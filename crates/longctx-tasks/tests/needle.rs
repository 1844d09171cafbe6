//! The passkey needle generator: word definition, grid, insertion position, scores, and a
//! snapshot of the prompts for a fixed seed.

use longctx_tasks::needle::{score, words, Haystack, NeedleGrid, INSTRUCTION, QUESTION};

fn haystack() -> Haystack {
    // Three "essays" in file order; the second does not end in whitespace, the third starts with it.
    Haystack::from_texts(vec![
        "Alpha beta gamma delta.\nEpsilon zeta eta theta iota kappa.\n\n".to_string(),
        "Lambda mu nu xi omicron pi rho".to_string(),
        "  sigma tau upsilon phi chi psi omega.\n".to_string(),
    ])
}

#[test]
fn words_are_python_regex_words() {
    // re.findall(r"[^\s]+[\s]*", s) in CPython 3.11.
    assert_eq!(
        words("  lead and\ttab\n\nend  "),
        vec!["lead ", "and\t", "tab\n\n", "end  "]
    );
    assert_eq!(words("one"), vec!["one"]);
    assert!(words("").is_empty() && words("   ").is_empty());
}

#[test]
fn paper_grid_matches_the_benchmark() {
    let grid = NeedleGrid::paper(0);
    // Python: [512] + [int(512 + i * (20480 - 512) / 9) for i in range(1, 9)] + [20480]
    assert_eq!(
        grid.lengths,
        vec![512, 2730, 4949, 7168, 9386, 11605, 13824, 16042, 18261, 20480]
    );
    assert_eq!(grid.depths.len(), 10);
    assert_eq!(grid.depths[1], 0.1111111111111111);
    assert_eq!(grid.depths[9], 1.0);
    assert_eq!(grid.trials, 3);
    assert!(NeedleGrid::new(10, 5, 3, 3, 1, 0).is_err());
}

#[test]
fn background_cycles_the_essays_and_cuts_to_n_words() {
    let h = haystack();
    let b = h.background(40);
    assert_eq!(words(&b).len(), 40);
    assert!(b.starts_with("Alpha beta") && !b.ends_with(' '));
    // "rho" + "  sigma" joined across the file boundary: the second essay lacks trailing space.
    assert!(b.contains("rho  sigma"));
}

#[test]
fn the_needle_sits_at_word_int_n_times_depth() {
    let grid = NeedleGrid::new(30, 50, 3, 5, 2, 7).unwrap();
    for s in grid.samples(&haystack()) {
        let content = s
            .prompt
            .text
            .strip_prefix(INSTRUCTION)
            .unwrap()
            .strip_suffix(QUESTION)
            .unwrap();
        let needle_at = content
            .find(&format!("The pass key is {}. Remember it.", s.key))
            .unwrap();
        let before = words(&content[..needle_at]).len();
        assert_eq!(
            before,
            (s.length as f64 * s.depth) as usize,
            "length {} depth {}",
            s.length,
            s.depth
        );
        assert_eq!(before, s.needle_word);
        assert!(
            content.ends_with(' '),
            "the benchmark's join leaves a trailing space"
        );
        assert_eq!(s.key.len(), 7);
    }
}

/// FNV-1a, to pin a snapshot in one number.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn prompts_for_a_fixed_seed_are_pinned() {
    let grid = NeedleGrid::new(20, 40, 2, 3, 2, 42).unwrap();
    let samples = grid.samples(&haystack());
    let keys: Vec<&str> = samples.iter().map(|s| s.key.as_str()).collect();
    let all: String = samples
        .iter()
        .map(|s| {
            format!(
                "{}|{}|{}|{}|{}\n",
                s.length, s.depth, s.trial, s.key, s.prompt.text
            )
        })
        .collect();
    assert_eq!(samples.len(), 12);
    assert_eq!(&keys[..4], &PINNED_KEYS);
    assert_eq!(fnv1a(all.as_bytes()), PINNED_DIGEST);
    assert_eq!(samples[0].prompt.text, PINNED_FIRST_PROMPT);
    assert_eq!(samples[0].prompt.question(), QUESTION);
}

const PINNED_KEYS: [&str; 4] = ["9213801", "6752387", "0691144", "8498788"];
const PINNED_DIGEST: u64 = 0x55c7_68b9_0e71_d9ef;
/// Depth 0: the benchmark's `' '.join` puts a space between the instruction and the needle.
const PINNED_FIRST_PROMPT: &str = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n The pass key is 9213801. Remember it. 9213801 is the pass key. Alpha beta gamma delta.\nEpsilon zeta eta theta iota kappa.\n\nLambda mu nu xi omicron pi rho  sigma tau upsilon \nWhat is the pass key? The pass key is ";

#[test]
fn scores_match_the_benchmark_metrics() {
    // Partial match values from CPython's SequenceMatcher(None, key, answer, autojunk=False).
    assert_eq!(score("1234567", "The pass key is 1234567."), (1.0, 1.0));
    assert_eq!(score("1234567", "12 34567"), (0.0, 0.7142857142857143));
    assert_eq!(score("1234567", ""), (0.0, 0.0));
    assert_eq!(
        score("0012345", "9912345 and 00123"),
        (0.0, 0.7142857142857143)
    );
}

#[test]
fn summaries_group_by_cell_length_and_overall() {
    use longctx_tasks::needle::{summarize, NeedleOutcome};
    let o = |length, depth, exact, partial| NeedleOutcome {
        length,
        depth,
        exact,
        partial,
    };
    let s = summarize(&[
        o(100, 0.0, 1.0, 1.0),
        o(100, 0.0, 0.0, 0.5),
        o(100, 1.0, 1.0, 1.0),
        o(200, 0.0, 0.0, 0.0),
    ]);
    assert_eq!(s.cells.len(), 3);
    assert_eq!(
        (s.cells[0].2.exact, s.cells[0].2.partial, s.cells[0].2.count),
        (0.5, 0.75, 2)
    );
    assert_eq!(s.lengths[0].1.exact, 2.0 / 3.0);
    assert_eq!(s.lengths[1].1.exact, 0.0);
    assert_eq!((s.overall.exact, s.overall.count), (0.5, 4));
}

#[test]
fn fitted_grid_leaves_room_for_the_answer() {
    let g = NeedleGrid::fitted(8192, 1.3, 0).unwrap();
    let longest = *g.lengths.last().unwrap();
    assert!(
        (longest as f64 * 1.3) as usize + 96 + 256 <= 8192,
        "{longest}"
    );
    assert_eq!(g.lengths[0], 512);
    assert_eq!(g.lengths.len(), 10);
}
