"""The library and framework functions that each exercise asks the student to write themselves.

An answer that calls one of them (``F.pixel_unshuffle`` for a pixel unshuffle "with reshape and permute only",
``latent_shapes`` for the latent shapes "by hand", ...) may pass its check, since the check compares with that
very function. The grader does not score such an answer 0: it reports the call in a column for the teacher,
who decides. Comments and strings are ignored.
"""

from __future__ import annotations

import io
import re
import tokenize

__all__ = ["REFERENCES", "code_without_comments", "reference_calls"]

#: Exercise → regular expressions of the calls that would replace the student's work (matched on code
#: without comments and strings).
REFERENCES: dict[str, tuple[str, ...]] = {
    "Exercise 1.1": (r"\bConv2d\b",),
    "Exercise 1.2": (r"\bautograd\b", r"\bConv2d\b"),
    "Exercise 1.4": (r"\bChannelStandardizer\b",),
    "Exercise 2.1": (r"\bcdf\b",),
    "Exercise 2.2": (r"\bmultivariate_normal\b",),
    "Exercise 2.3": (r"\bcoupling_forward\b",),
    "Exercise 2.4": (r"\bAllInOneBlock\b",),
    "Exercise 3.1": (r"[\w.]*\.pixel_unshuffle\b", r"import[^\n]*\bpixel_unshuffle\b", r"\bPixelUnshuffle\b",
                     r"\bIRevNetDownsampling\b", r"\bIRevNetUpsampling\b"),
    "Exercise 3.2": (r"\blatent_shapes\b", r"\bbuild_uflow\b", r"\boutput_dims\b"),
    "Exercise 3.3": (r"\bbuild_uflow\b", r"\bcount_trainable_parameters\b", r"\.parameters\(", r"\.numel\("),
    "Exercise 4.1": (r"\banomaly_score_map\b", r"\banomaly_map\b"),
    "Exercise 4.2": (r"\broc_auc_score\b", r"\broc_curve\b", r"\bimage_auroc\b", r"\bpixel_auroc\b",
                     r"\bmannwhitneyu\b"),
    "Exercise 4.3": (r"\bpro_curve\b", r"\bpro_at\b", r"\bpro_at_reference\b", r"\baupro\b"),
    "Exercise 4.4": (r"\biou_per_image\b", r"\bjaccard_score\b", r"\bmiou\b"),
    "Exercise 5.1": (r"\btree_nfa\b", r"\btree_log10_prob_maps\b"),
    "Exercise 5.2": (r"\blog10_num_tests_tree\b",),
    "Exercise 5.3": (r"\blambertw\b",),
    "Exercise 7.1": (r"\bbuild_parallel_flow\b", r"\bMSFlow\b", r"\.parameters\(", r"\.numel\("),
    "Exercise 7.2": (r"\bexpected_normal_log_likelihood\b", r"\bintegrate\b", r"\bquad\("),
    "Exercise 7.3": (r"\bexpected_normal_log_likelihood\b", r"\bminimize_scalar\b"),
}


def code_without_comments(code: str) -> str:
    """``code`` with comments and string literals blanked (best effort: code that does not tokenize is kept)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return re.sub(r"#[^\n]*", "", code)
    lines = code.splitlines(keepends=True)
    for t in reversed(tokens):  # blank from the end, so that earlier positions stay valid
        (r0, c0), (r1, c1) = t.start, t.end
        if t.type == tokenize.COMMENT or (t.type == tokenize.STRING and r0 == r1 and c1 - c0 > 2):
            keep = "" if t.type == tokenize.COMMENT else t.string[0] + " " * (c1 - c0 - 2) + t.string[-1]
            lines[r0 - 1] = lines[r0 - 1][:c0] + keep + lines[r0 - 1][c1:]
    return "".join(lines)


def reference_calls(exercise: str, code: str) -> list[str]:
    """The names from :data:`REFERENCES` that ``code`` (the student's lines of one exercise) uses, in order."""
    text = code_without_comments(code)
    found = []
    for pattern in REFERENCES.get(exercise, ()):
        for match in re.finditer(pattern, text):
            name = match.group(0).strip(".(")
            if name.startswith("import"):
                name = "import pixel_unshuffle"
            if name not in found:
                found.append(name)
    return found
