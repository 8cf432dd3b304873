fn main() {
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path).unwrap();
        match flowgate_dsl::Document::load(&text) {
            Err(e) => println!("LOADERR {path}: {e}"),
            Ok(doc) => {
                for d in doc.diagnostics() {
                    println!("{} {path}: {:?} {d}", if d.is_error() {"ERROR"} else {"warn"}, d.code);
                }
            }
        }
    }
}
