//! Replays the fuzz corpus (crates/turn/fuzz/seeds) through the fuzz entry
//! point on stable Rust, so every seed, and every crash input added to the
//! corpus later, is checked on each test run.

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

use postern_turn::stun::Message;

#[test]
fn fuzz_seeds_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut seeds = 0;
    let mut valid_stun = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        postern_turn::fuzzing::fuzz_one(&data);
        // And every truncation of it.
        for len in 0..data.len() {
            postern_turn::fuzzing::fuzz_one(&data[..len]);
        }
        seeds += 1;
        valid_stun += usize::from(Message::parse(&data).is_ok());
    }
    assert!(
        seeds >= 15,
        "the corpus at {} lost seeds ({seeds})",
        dir.display()
    );
    assert!(
        valid_stun >= 10,
        "most seeds should be valid STUN to reach deep code ({valid_stun})"
    );
}
