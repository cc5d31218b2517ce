//! Replays the control-message fuzz corpus (crates/model/fuzz/seeds) through
//! the fuzz entry point on stable Rust, with every truncation of each seed.

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

#[test]
fn control_message_seeds_never_panic_and_round_trip() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            postern_model::protocol::fuzz_one(&data) >= 1,
            "{} is no control message",
            String::from_utf8_lossy(&data)
        );
        for len in 0..data.len() {
            postern_model::protocol::fuzz_one(&data[..len]);
        }
        seeds += 1;
    }
    assert!(
        seeds >= 10,
        "the corpus at {} lost seeds ({seeds})",
        dir.display()
    );
}
