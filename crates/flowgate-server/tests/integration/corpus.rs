//! `flowgate check` accepts every real DSL export of the corpus.

use std::path::Path;
use std::process::Command;

#[test]
fn check_accepts_every_corpus_export() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus");
    let mut files: Vec<_> = ["dify-fixtures", "awesome-dify-workflow"]
        .iter()
        .flat_map(|folder| std::fs::read_dir(corpus.join(folder)).expect("corpus folder"))
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 75, "the corpus holds 75 exports");
    let output = Command::new(env!("CARGO_BIN_EXE_flowgate")).arg("check").args(&files).output().expect("run flowgate check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let failures: Vec<&str> = stdout.lines().filter(|line| line.starts_with("error ")).collect();
    assert!(failures.is_empty(), "flowgate check rejected corpus exports:\n{}", failures.join("\n"));
    let ok = stdout.lines().filter(|line| line.starts_with("ok ")).count();
    assert_eq!(ok, files.len(), "one ok line per file:\n{stdout}");
    assert!(output.status.success(), "exit status {:?}", output.status);
}
