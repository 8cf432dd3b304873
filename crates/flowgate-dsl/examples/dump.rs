fn main() {
    let path = std::env::args().nth(1).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = flowgate_dsl::Document::load(&text).unwrap();
    println!("{}", serde_json::to_string_pretty(&doc.raw()["workflow"]["graph"]["nodes"][0]).unwrap());
}
