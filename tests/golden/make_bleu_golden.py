"""Generates tests/golden/bleu.json: BLEU and chrF expected values from sacreBLEU.

Run from the repository root with the reference venv (sacrebleu 2.6.0):
    /work/venvs/torch/bin/python tests/golden/make_bleu_golden.py

Real text: the first lines of Multi30k test_2016_flickr (en, and fr for Unicode
punctuation), with hypotheses and extra references made by a seeded, deterministic
perturbation below. Everything the Rust tests need (hypotheses and references
included) is stored in the JSON, so the tests never read the dataset.

Sections:
- corpora: named lists of lines;
- tokenize: sacreBLEU tokenizer outputs for single lines;
- lower: Python str.lower() of tricky strings;
- cases: library-level corpus scores (sacrebleu.metrics.BLEU / CHRF API);
- cli: raw file contents and the sacrebleu CLI's JSON output for them.
"""

import json
import os
import random
import subprocess
import sys
import tempfile

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_char import TokenizerChar
from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International
from sacrebleu.tokenizers.tokenizer_none import NoneTokenizer
from sacrebleu.utils import sum_of_lists

DATA = "/work/shared/datasets/multi30k"
N_EN = 150
N_FR = 60
SACREBLEU_CLI = os.path.join(os.path.dirname(sys.executable), "sacrebleu")


def read(name, n):
    with open(os.path.join(DATA, name), encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n") for _, line in zip(range(n), f)]


def perturb(lines, seed, strength=0.15):
    """Deterministic word-level noise: drops, swaps, substitutions, case flips,
    duplications, truncations and the occasional empty line."""
    rng = random.Random(seed)
    vocab = sorted({w for line in lines for w in line.split()})
    out = []
    for line in lines:
        words = line.split()
        r = rng.random()
        if r < 0.02:
            out.append("")
            continue
        if r < 0.06 and len(words) > 3:
            words = words[: len(words) // 2]
        new = []
        for w in words:
            p = rng.random()
            if p < strength / 3:
                continue
            if p < 2 * strength / 3:
                new.append(rng.choice(vocab))
            elif p < strength:
                new.append(w.upper() if rng.random() < 0.5 else w.lower())
            else:
                new.append(w)
            if rng.random() < 0.03:
                new.append(w)
        for i in range(len(new) - 1):
            if rng.random() < strength / 3:
                new[i], new[i + 1] = new[i + 1], new[i]
        out.append(" ".join(new))
    return out


EDGE_STRINGS = [
    "",
    " ",
    "Hello, world!",
    "It costs $5.00 (or 4,50 €) -- 10-20% off; 3.14 and 1,000.",
    "end with a number 2016.",
    "a &amp; b &lt;c&gt; &quot;d&quot; &amp;amp; <skipped> e",
    "line-\nbreak and\nnewline",
    "«Bonjour», dit-il… «C’est l’été!» 1.000,50 € ± 2²",
    "“Quotes” and ‘single’ — dashes – and … ellipsis",
    "日本語の文章。句読点、テスト！ 中文（括号）",
    "emoji 🙂 and ✓ symbols © ® ™ ° ^ ` ~ | + < = >",
    "Roman Ⅻ, fraction ½, Arabic ٣٫٥ and superscript x³.",
    "tabs\tand\u3000ideographic\u00a0nbsp\x1cseparator\x1f",
    "trailing spaces and cr   \r",
    "İSTANBUL ΟΔΟΣ Straße ǅ",
    "a.b,c 1.b a.1 .5 5. ,x x,",
    "(hi) [there] {you}",
    "--- ... ,,, !!!",
    "\ufeffbom first",
    "x",
]

# Only characters assigned by Unicode 14.0 (Python 3.11's unicodedata): Rust's
# to_lowercase follows a newer Unicode (e.g. U+1C89, new in 16.0, lowercases there).
LOWER_STRINGS = [
    "İSTANBUL", "ΟΔΟΣ ΟΔΟΣ.", "Σ", "ΑΣ ΣΑ", "Straße STRASSE ẞ", "ǅǄǆ", "ΆΈΉ",
    "ÅNGSTRÖM", "ＡＢＣ", "𐐀𐐁", "Ⅻ", "ꞫꞬꞭ", "ᏸ", "DŽ",
]

TOKENIZERS = {
    "13a": Tokenizer13a(),
    "intl": TokenizerV14International(),
    "none": NoneTokenizer(),
    "char": TokenizerChar(),
}


def bleu_expected(hyps, refs, **kw):
    metric = BLEU(**kw)
    stats = sum_of_lists(metric._extract_corpus_statistics(hyps, refs))
    score = metric.corpus_score(hyps, refs)
    order = metric.max_ngram_order
    return {
        "score": score.score,
        # raw statistics: sacreBLEU's add-k adds k to the lists it returns
        "counts": [int(x) for x in stats[2:2 + order]],
        "totals": [int(x) for x in stats[2 + order:]],
        "precisions": list(score.precisions),
        "bp": score.bp,
        "ratio": score.ratio,
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
        "signature": metric.get_signature().format(),
        "verbose": score._verbose,
    }


def chrf_expected(hyps, refs, **kw):
    metric = CHRF(**kw)
    stats = sum_of_lists(metric._extract_corpus_statistics(hyps, refs))
    score = metric.corpus_score(hyps, refs)
    return {
        "score": score.score,
        "name": score.name,
        "stats": [list(map(int, stats[i:i + 3])) for i in range(0, len(stats), 3)],
        "signature": metric.get_signature().format(),
    }


def main():
    en = read("test_2016_flickr.en", N_EN)
    fr = read("test_2016_flickr.fr", N_FR)
    corpora = {
        "en_ref": en,
        "en_ref2": perturb(en, seed=11, strength=0.2),
        "en_ref3": perturb(en, seed=12, strength=0.3),
        "en_hyp": perturb(en, seed=1),
        "en_hyp_noisy": perturb(en, seed=2, strength=0.5),
        "fr_ref": fr,
        "fr_hyp": perturb(fr, seed=3),
        "edge": EDGE_STRINGS,
        "edge_hyp": perturb(EDGE_STRINGS, seed=4, strength=0.4),
        "empty20": [""] * 20,
        "en20": en[:20],
        "disjoint20": [f"zzq{i} yyq{i}" for i in range(20)],
        # unigram matches only: the words of the reference in reverse order
        "reversed20": [" ".join(reversed(line.split())) for line in en[:20]],
        "one_word_ref": ["cat", "dog", "a", "house", "", "bird"],
        "one_word_hyp": ["cat", "cow", "a", "", "house", "bird"],
        "one_word_ref2": ["kitten", "dog", "an", "home", "x", "birds"],
        "tie_hyp": ["a b c d e", "a b"],
        "tie_ref1": ["a b c d e f", "a b c"],
        "tie_ref2": ["a b c d", "a"],
    }

    cases = []

    def bleu(name, hyp, refs, **kw):
        exp = bleu_expected(corpora[hyp], [corpora[r] for r in refs], **kw)
        cases.append({"name": name, "metric": "bleu", "hyp": hyp, "refs": refs, "options": kw, "expected": exp})

    def chrf(name, hyp, refs, **kw):
        exp = chrf_expected(corpora[hyp], [corpora[r] for r in refs], **kw)
        cases.append({"name": name, "metric": "chrf", "hyp": hyp, "refs": refs, "options": kw, "expected": exp})

    for tok in ["13a", "intl", "none", "char"]:
        for lc in [False, True]:
            bleu(f"en_{tok}_lc{int(lc)}", "en_hyp", ["en_ref"], tokenize=tok, lowercase=lc)
            bleu(f"fr_{tok}_lc{int(lc)}", "fr_hyp", ["fr_ref"], tokenize=tok, lowercase=lc)
            bleu(f"edge_{tok}_lc{int(lc)}", "edge_hyp", ["edge"], tokenize=tok, lowercase=lc)
    for sm, sv in [("exp", None), ("floor", None), ("floor", 0.3), ("add-k", None), ("add-k", 2), ("none", None)]:
        tag = f"{sm}_{sv}"
        bleu(f"en_noisy_{tag}", "en_hyp_noisy", ["en_ref"], smooth_method=sm, smooth_value=sv)
        bleu(f"no_match_{tag}", "disjoint20", ["en20"], smooth_method=sm, smooth_value=sv)
        bleu(f"unigrams_only_{tag}", "reversed20", ["en20"], smooth_method=sm, smooth_value=sv)
        bleu(f"empty_hyp_lines_{tag}", "empty20", ["en20"], smooth_method=sm, smooth_value=sv)
        bleu(f"empty_ref_lines_{tag}", "en20", ["empty20"], smooth_method=sm, smooth_value=sv)
        bleu(f"one_word_{tag}", "one_word_hyp", ["one_word_ref"], smooth_method=sm, smooth_value=sv)
        bleu(f"one_word_eff_{tag}", "one_word_hyp", ["one_word_ref"], smooth_method=sm, smooth_value=sv,
             effective_order=True)
    bleu("en_2refs", "en_hyp", ["en_ref", "en_ref2"])
    bleu("en_3refs_noisy", "en_hyp_noisy", ["en_ref2", "en_ref3", "en_ref"])
    bleu("en_3refs_lc_intl", "en_hyp_noisy", ["en_ref2", "en_ref3", "en_ref"], tokenize="intl", lowercase=True)
    bleu("one_word_2refs", "one_word_hyp", ["one_word_ref", "one_word_ref2"])
    bleu("closest_len_tie", "tie_hyp", ["tie_ref1", "tie_ref2"])
    bleu("en_eff_order", "en_hyp_noisy", ["en_ref"], effective_order=True)
    bleu("en_order2", "en_hyp", ["en_ref"], max_ngram_order=2)
    bleu("identical", "en_ref", ["en_ref"])

    for name, hyp, refs in [
        ("en", "en_hyp", ["en_ref"]),
        ("en_noisy", "en_hyp_noisy", ["en_ref"]),
        ("fr", "fr_hyp", ["fr_ref"]),
        ("edge", "edge_hyp", ["edge"]),
        ("en_3refs", "en_hyp_noisy", ["en_ref2", "en_ref3", "en_ref"]),
        ("one_word", "one_word_hyp", ["one_word_ref"]),
        ("one_word_2refs", "one_word_hyp", ["one_word_ref", "one_word_ref2"]),
        ("empty_hyp_lines", "empty20", ["en20"]),
        ("empty_ref_lines", "en20", ["empty20"]),
        ("no_match", "disjoint20", ["en20"]),
    ]:
        for wo in [0, 2]:
            chrf(f"chrf_{name}_w{wo}", hyp, refs, word_order=wo)
        chrf(f"chrf_{name}_w2_lc", hyp, refs, word_order=2, lowercase=True)
        chrf(f"chrf_{name}_w2_eps", hyp, refs, word_order=2, eps_smoothing=True)
    chrf("chrf_en_space", "en_hyp", ["en_ref"], whitespace=True)
    chrf("chrf_fr_c4_w1_b1", "fr_hyp", ["fr_ref"], char_order=4, word_order=1, beta=1)
    chrf("chrf_edge_space_w2_lc", "edge_hyp", ["edge"], whitespace=True, word_order=2, lowercase=True)

    tokenize = []
    for name, tok in TOKENIZERS.items():
        for line in EDGE_STRINGS + corpora["fr_ref"][:12] + corpora["en_hyp"][:8]:
            tokenize.append({"tokenizer": name, "input": line, "output": tok(line)})

    lower = [{"input": s, "output": s.lower()} for s in LOWER_STRINGS + EDGE_STRINGS]
    whitespace = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and chr(cp).isspace()]

    cli = []
    with tempfile.TemporaryDirectory() as tmp:
        def run_cli(name, refs, hyps, cotext_args, sacre_args):
            ref_paths = []
            for i, content in enumerate(refs):
                p = os.path.join(tmp, f"{name}.ref{i}")
                with open(p, "w", encoding="utf-8", newline="") as f:
                    f.write(content)
                ref_paths.append(p)
            expected = []
            for i, content in enumerate(hyps):
                p = os.path.join(tmp, f"{name}.hyp{i}")
                with open(p, "w", encoding="utf-8", newline="") as f:
                    f.write(content)
                res = subprocess.run(
                    [SACREBLEU_CLI, *ref_paths, "-i", p, "-f", "json", "-w", "12", "-q", *sacre_args],
                    check=True, capture_output=True, text=True)
                out = json.loads(res.stdout)
                expected.append({"score": out["score"], "signature": out["signature"], "name": out["name"],
                                 "verbose_score": out.get("verbose_score")})
            cli.append({"name": name, "refs": refs, "hyps": hyps, "args": cotext_args, "expected": expected})

        crlf_ref = "".join(line + " \r\n" for line in en[:20])
        crlf_hyps = [
            "\r\n".join(corpora["en_hyp"][:20]),  # no final newline
            "".join(line + "\t \n" for line in corpora["en_hyp_noisy"][:20]),
            "".join(line + "\n" for line in corpora["en_ref2"][:20]),
        ]
        run_cli("crlf_bleu", [crlf_ref], crlf_hyps, [], [])
        run_cli("crlf_chrf_pp", [crlf_ref], crlf_hyps, ["--metric", "chrf", "--chrf-word-order", "2"],
                ["-m", "chrf", "--chrf-word-order", "2"])
        two_refs = ["".join(line + "\n" for line in en[:20]), "".join(line + "\n" for line in corpora["en_ref3"][:20])]
        run_cli("two_refs_intl_lc", two_refs, crlf_hyps[1:], ["--tokenize", "intl", "--lowercase"],
                ["--tokenize", "intl", "--lowercase"])
        run_cli("floor_smoothing", two_refs[:1], crlf_hyps[1:2], ["--smooth", "floor", "--smooth-value", "0.2"],
                ["--smooth-method", "floor", "--smooth-value", "0.2"])
        run_cli("add_k_char", two_refs[:1], crlf_hyps[1:2], ["--smooth", "add-k", "--tokenize", "char"],
                ["--smooth-method", "add-k", "--tokenize", "char"])
        run_cli("chrf_lc", two_refs, crlf_hyps[:1], ["--metric", "chrf", "--lowercase"],
                ["-m", "chrf", "--chrf-lowercase"])
        blank_lines = "\n".join(["", "a cat", "", " ", "dogs run"]) + "\n\n"
        run_cli("blank_lines", ["\n".join(["x", "a cat", "y", "z", "dogs run", "w"]) + "\n"], [blank_lines],
                ["--smooth", "none"], ["--smooth-method", "none"])

    golden = {
        "sacrebleu_version": sacrebleu.__version__,
        "corpora": corpora,
        "cases": cases,
        "tokenize": tokenize,
        "lower": lower,
        "py_whitespace": whitespace,
        "cli": cli,
    }
    with open("tests/golden/bleu.json", "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases, {len(tokenize)} tokenizer lines, {len(cli)} CLI cases")


if __name__ == "__main__":
    main()
