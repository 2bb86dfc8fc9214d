import pytest

from stream_worker.devtools.tail import HEADER, TitlesFileError, format_recommendation, load_titles

RECORD = {
    "user_id": "276",
    "model_name": "multvae",
    "model_version": 1,
    "events_reflected": 117,
    "generated_at": 1_000_073,
    "last_event_time": 1_000_000,
    "items": [{"item_id": "50", "score": 2.88}, {"item_id": "174", "score": 2.76}, {"item_id": "9", "score": 1.0}],
}


def test_a_line_lines_up_under_the_header_and_shows_titles():
    line = format_recommendation(RECORD, 2, {"50": "Star Wars (1977)"})
    assert line.index("multvae") == HEADER.index("model")
    assert "73 ms" in line and "Star Wars (1977) (2.88), 174 (2.76) +1 more" in line


@pytest.mark.parametrize(
    ("name", "text", "encoding"),
    [
        ("u.item", "50|Star Wars (1977)|01-Jan-1977||http://x|0|1\n51|Caf\xe9 (1994)|x\n", "latin-1"),
        ("movies.dat", "50::Star Wars (1977)::Action\n51::Café (1994)::Drama\n", "utf-8"),
        ("movies.csv", 'movieId,title,genres\n50,Star Wars (1977),Action\n51,"Café, The (1994)",Drama\n', "utf-8"),
    ],
)
def test_movielens_title_files(tmp_path, name, text, encoding):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    titles = load_titles(path)
    assert titles["50"] == "Star Wars (1977)" and titles["51"].startswith("Caf")


def test_a_file_that_is_not_titles_names_file_and_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\nsome words\n")
    with pytest.raises(TitlesFileError, match=r"notes.txt:2: expected"):
        load_titles(path)
