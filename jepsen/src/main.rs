//! `cargo run -p jepsen -- test|analyze ...`

fn main() {
    eprintln!("jepsen: not built yet");
    std::process::exit(2);
}
