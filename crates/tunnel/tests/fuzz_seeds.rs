//! Replays the packet fuzz corpus (crates/tunnel/fuzz/seeds) through the fuzz
//! entry point on stable Rust, with every truncation of each seed.

#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion

#[test]
fn packet_seeds_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut seeds = 0;
    let mut valid = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        postern_tunnel::fuzzing::fuzz_one(&data);
        for len in 0..data.len() {
            postern_tunnel::fuzzing::fuzz_one(&data[..len]);
        }
        seeds += 1;
        valid += usize::from(postern_tunnel::packet::Packet::parse(&data).is_ok());
    }
    assert!(
        seeds >= 10,
        "the corpus at {} lost seeds ({seeds})",
        dir.display()
    );
    assert!(
        valid >= 8,
        "most seeds should be valid packets to reach deep code ({valid})"
    );
}
