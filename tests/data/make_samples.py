"""Writes the tiny dictd samples in tests/data/dictd (run once; the outputs are committed).

The entries are written for these tests in each dictionary's format (headword lines, markup, tags);
they are not copied from the Debian packages.
"""

import gzip
from pathlib import Path

DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

SAMPLES = {
    "gcide": [
        (["00-database-short"], "00-database-short\n     Sample of the GCIDE format\n"),
        (
            ["Writ"],
            (
                "Writ \\Writ\\ (r[i^]t), n. [AS. writ.] (Law)\n   A written order of a court commanding a\n"
                "   person to do or not to do some act. See {Summons}.\n   [1913 Webster]\n"
            ),
        ),
        (
            ["Abate"],
            (
                'Abate \\A*bate"\\ ([.a]*b[=a]t"), v. t. [OF. abatre.]\n   1. To lessen; to make smaller.\n'
                "      [1913 Webster]\n\n   2. (Law) To put an end to; as, to abate a nuisance.\n"
                "      --Blackstone.\n      [1913 Webster]\n"
            ),
        ),
        (
            ["Comet"],
            (
                'Comet \\Com"et\\, n. [L. cometa.] (Astron.)\n   A body of the solar system that moves about\n'
                "   the sun in an elongated orbit, with a bright tail.\n   [1913 Webster]\n"
            ),
        ),
        (
            ["Ragout"],
            (
                'Ragout \\Ra*gout"\\, n. [F. rago[^u]t.] (Cookery)\n   A dish of meat and vegetables stewed\n'
                "   together and highly seasoned.\n   [1913 Webster]\n"
            ),
        ),
        (["Table"], 'Table \\Ta"ble\\, n.\n   A flat surface on legs, for meals or work.\n   [1913 Webster]\n'),
    ],
    "foldoc": [
        (
            ["heap", "free store"],
            (
                "heap\nfree store\n\n   <programming> An area of {memory} from which a\n"
                "   program allocates blocks at run time {(http://example.org/heap)}.\n\n"
                "   (2003-07-03)\n"
            ),
        ),
        (["Acme Corp"], "Acme Corp\n\n   A company named in many examples.\n"),
    ],
    "jargon": [
        (
            ["segfault"],
            (
                "segfault\n /seg'fawlt/, n.,vi.\n\n    [Unix] Short for segmentation fault: a\n"
                "    program read memory it does not own, and the {kernel} stopped it.\n"
            ),
        ),
    ],
    "wn": [
        (
            ["gazpacho"],
            ("gazpacho\n    n 1: a cold soup of tomatoes, peppers and cucumbers [syn:\n         {gazpacho}]\n"),
        ),
        (
            ["Sirius"],
            (
                "Sirius\n    n 1: the brightest star in the sky, in the constellation\n"
                "         Canis Major [syn: {Sirius}, {Dog Star}]\n"
            ),
        ),
        (["rock star"], "rock star\n    n 1: a star performer of rock music\n"),
    ],
}


def number(value: int) -> str:
    digits = ""
    while True:
        digits = DIGITS[value % 64] + digits
        value //= 64
        if not value:
            return digits


def write(folder: Path, name: str, entries: list[tuple[list[str], str]]) -> None:
    data, index = b"", []
    for headwords, text in entries:
        raw = text.encode()
        for word in headwords:
            index.append(f"{word}\t{number(len(data))}\t{number(len(raw))}")
        data += raw
    (folder / f"{name}.index").write_text("\n".join(sorted(index)) + "\n")
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(data, mtime=0))


if __name__ == "__main__":
    target = Path(__file__).parent / "dictd"
    target.mkdir(exist_ok=True)
    for name, entries in SAMPLES.items():
        write(target, name, entries)
