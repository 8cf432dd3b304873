"""Document-extractor expectations: graphon's own text extraction on every file in
tests/conformance/documents/, written to tests/conformance/expected/documents.json.

    $(scripts/oracle-python) tests/conformance/documents.py

The DOCX fixtures are built here with python-docx (graphon's own DOCX reader) when missing;
once committed they are not rebuilt, so their bytes stay stable.
"""

import json
import logging
import pathlib

import docx
from docx.enum.text import WD_BREAK
from docx.oxml import OxmlElement
from docx.oxml.ns import qn
from graphon.nodes.document_extractor import UnstructuredApiConfig
from graphon.nodes.document_extractor.node import _extract_text_by_file_extension

ROOT = pathlib.Path(__file__).resolve().parent
DOCUMENTS = ROOT / "documents"
EXPECTED = ROOT / "expected" / "documents.json"


def add_hyperlink(paragraph, text, url):
    part = paragraph.part
    relation = part.relate_to(url, docx.opc.constants.RELATIONSHIP_TYPE.HYPERLINK, is_external=True)
    link = OxmlElement("w:hyperlink")
    link.set(qn("r:id"), relation)
    run = OxmlElement("w:r")
    text_element = OxmlElement("w:t")
    text_element.text = text
    run.append(text_element)
    link.append(run)
    paragraph._p.append(link)


def make_report_docx(path):
    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    paragraph = document.add_paragraph("Revenue grew ")
    paragraph.add_run("12%").bold = True
    paragraph.add_run("\tafter tax")
    run = paragraph.add_run("line one")
    run.add_break()
    run.add_text("line two")
    page = paragraph.add_run("")
    page.add_break(WD_BREAK.PAGE)
    link = document.add_paragraph("See ")
    add_hyperlink(link, "the site", "https://example.com")
    link.add_run(" & <more>.")
    document.add_paragraph("")
    table = document.add_table(rows=3, cols=3)
    for row, values in enumerate([["Name", "Q1", "Q2"], ["Ada", "1", "2"], ["Grace", "3", ""]]):
        for column, value in enumerate(values):
            table.cell(row, column).text = value
    table.cell(2, 2).paragraphs[0].add_run("four")
    table.cell(2, 2).add_paragraph("five")
    empty = document.add_table(rows=2, cols=2)
    empty.cell(0, 0).text = " "
    merged = document.add_table(rows=3, cols=3)
    merged.cell(0, 0).merge(merged.cell(0, 1)).text = "wide"
    merged.cell(0, 2).text = "c"
    merged.cell(1, 0).merge(merged.cell(2, 0)).text = "tall"
    merged.cell(1, 1).text = "x"
    merged.cell(2, 2).text = "z"
    document.add_paragraph("The end.")
    document.save(path)


def make_empty_docx(path):
    docx.Document().save(path)


FIXTURE_BUILDERS = {"report.docx": make_report_docx, "empty.docx": make_empty_docx}


def main():
    # graphon logs a traceback for each file it cannot read; the message is what matters here.
    logging.disable(logging.CRITICAL)
    for name, build in FIXTURE_BUILDERS.items():
        if not (DOCUMENTS / name).exists():
            build(DOCUMENTS / name)
    (DOCUMENTS / "not-a-zip.docx").write_bytes(b"this is not a zip archive")
    expected = {}
    for path in sorted(DOCUMENTS.iterdir()):
        try:
            text = _extract_text_by_file_extension(
                file_content=path.read_bytes(),
                file_extension=path.suffix.lower(),
                unstructured_api_config=UnstructuredApiConfig(),
            )
            expected[path.name] = {"text": text}
        except Exception as error:  # noqa: BLE001 - the message is the expectation
            expected[path.name] = {"error": str(error)}
    EXPECTED.write_text(json.dumps(expected, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{len(expected)} documents -> {EXPECTED.relative_to(ROOT.parent.parent)}")


if __name__ == "__main__":
    main()
