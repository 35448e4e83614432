"""The committee's statistics: who scored whom how, what was accepted, what failed to parse."""
from __future__ import annotations

import polars as pl


def committee_stats(exam: pl.DataFrame, decisions: pl.DataFrame, reviews: pl.DataFrame | None,
                    records: pl.DataFrame, policy, n_teachers: int) -> dict:
    rationales = decisions.filter(pl.col("kind") == "rationale")
    mistakes = exam.filter(pl.col("verdict") != "correct")
    per_question = (mistakes.select("question_id")
                    .join(rationales.group_by("question_id").agg(pl.col("accepted").sum().alias("n")),
                          on="question_id", how="left")
                    .with_columns(pl.col("n").fill_null(0)))
    stats = {
        "questions": exam.height,
        "mistakes": mistakes.height,
        "rationales": rationales.height,
        "rationales_accepted": int(rationales["accepted"].sum()),
        "feedback": decisions.height - rationales.height,
        "feedback_accepted": int(decisions.filter(pl.col("kind") == "feedback")["accepted"].sum()),
        "records": {k: int((records["kind"] == k).sum()) for k in ("rationale", "feedback")},
        "questions_kept": records["question_id"].n_unique(),
        "accepted_per_teacher": {
            r["teacher"]: {"written": r["written"], "accepted": r["accepted"]}
            for r in rationales.group_by("teacher", maintain_order=True)
            .agg(pl.len().alias("written"), pl.col("accepted").sum()).iter_rows(named=True)
        },
        "questions_by_accepted_rationales": {
            str(k): int((per_question["n"] == k).sum()) for k in range(n_teachers + 1)
        },
        # Rationales the reviewers liked whose own final answer is not the gold one: what the
        # answer check catches (counted whatever the policy, so its effect can be judged).
        "passed_review_but_wrong_answer": int(rationales.filter(
            (pl.col("mean_score") > policy.threshold) & (pl.col("verdict") != "correct")).height),
        "rejection_reasons": _reason_counts(rationales),
        # Never reviewed, never trained on: empty, prompt too long, cut at max_tokens or inside the reasoning.
        "unusable": _unusable_counts(decisions),
        # Wrong final answers only guessed by the grader: the reviewers decided, not the answer check.
        "answer_uncheckable": _uncheckable_counts(rationales),
    }
    if reviews is not None and reviews.height:
        scored = reviews.filter(pl.col("kind") == "rationale")
        stats["review_matrix"] = [
            {"reviewer": r["reviewer"], "author": r["author"], "reviews": r["reviews"],
             "mean_score": r["mean_score"], "above_threshold": r["above_threshold"]}
            for r in scored.group_by("reviewer", "author", maintain_order=True).agg(
                pl.len().alias("reviews"),
                pl.col("score").cast(pl.Float64).mean().alias("mean_score"),
                (pl.col("score") > policy.threshold).mean().alias("above_threshold"),
            ).sort("reviewer", "author").iter_rows(named=True)
        ]
        stats["parse_failures_per_reviewer"] = {
            r["reviewer"]: {"reviews": r["reviews"], "no_score": r["no_score"], "out_of_range": r["out_of_range"]}
            for r in reviews.group_by("reviewer").agg(
                pl.len().alias("reviews"),
                (pl.col("score_status") == "no_score").sum().alias("no_score"),
                (pl.col("score_status") == "out_of_range").sum().alias("out_of_range"),
            ).sort("reviewer").iter_rows(named=True)
        }
    return stats


def _reason_counts(rationales: pl.DataFrame) -> dict:
    rejected = rationales.filter(~pl.col("accepted"))
    # Group "mean 2.50 <= 3.0" and its kin under their first words.
    kinds = rejected["reason"].str.replace(r"[\d.(].*$", "").str.strip_chars()
    return {k: int(n) for k, n in kinds.value_counts().iter_rows()}


def _unusable_counts(decisions: pl.DataFrame) -> dict:
    """{teacher: {kind: {why: n}}} for the completions that could not be used."""
    out: dict = {}
    for r in (decisions.filter(pl.col("unusable").is_not_null())
              .group_by("teacher", "kind", "unusable").len().sort("teacher", "kind", "unusable").iter_rows(named=True)):
        out.setdefault(r["teacher"], {}).setdefault(r["kind"], {})[r["unusable"]] = r["len"]
    return out


def _uncheckable_counts(rationales: pl.DataFrame) -> dict:
    guessed = rationales.filter((pl.col("verdict") == "wrong") & (pl.col("how") == "fallback")
                                & pl.col("unusable").is_null())
    return {"rationales": guessed.height, "accepted": int(guessed["accepted"].sum())}


def format_stats(stats: dict) -> str:
    """The statistics as the few small tables a person reads after a run."""
    lines = [
        f"committee: {stats['mistakes']} mistakes of {stats['questions']} questions; "
        f"{stats['rationales_accepted']}/{stats['rationales']} rationales accepted; "
        f"{stats['feedback_accepted']}/{stats['feedback']} feedback kept; "
        f"{stats['questions_kept']} questions kept; records: "
        + ", ".join(f"{n} {k}" for k, n in stats["records"].items()),
        f"answer check: {stats['passed_review_but_wrong_answer']} rationales passed review with a wrong final answer",
    ]
    if stats["unusable"]:
        lines.append("unusable (never reviewed or trained on): " + "; ".join(
            f"{t} " + ", ".join(f"{n} {kind} {why}" for kind, whys in kinds.items() for why, n in whys.items())
            for t, kinds in stats["unusable"].items()))
    guessed = stats["answer_uncheckable"]
    if guessed["rationales"]:
        lines.append(f"answer uncheckable (a wrong answer only guessed from the text, no answer marker): "
                     f"{guessed['rationales']} rationales, left to the reviewers, {guessed['accepted']} accepted")
    if stats["rejection_reasons"]:
        lines.append("rejected because: " + ", ".join(f"{k} x{n}" for k, n in stats["rejection_reasons"].items()))
    matrix = stats.get("review_matrix")
    if matrix:
        authors = sorted({m["author"] for m in matrix})
        width = max(len(a) for a in authors + [m["reviewer"] for m in matrix]) + 2
        lines.append("mean score (share above threshold), reviewer x author:")
        lines.append(" " * width + "".join(a.rjust(width) for a in authors))
        for reviewer in sorted({m["reviewer"] for m in matrix}):
            cells = {m["author"]: m for m in matrix if m["reviewer"] == reviewer and m["mean_score"] is not None}
            lines.append(reviewer.ljust(width) + "".join(
                (f"{cells[a]['mean_score']:.2f} ({cells[a]['above_threshold']:.0%})" if a in cells else "-").rjust(width)
                for a in authors))
        lines.append("parse failures per reviewer: " + ", ".join(
            f"{r}: {v['no_score']} no score, {v['out_of_range']} out of range of {v['reviews']}"
            for r, v in stats["parse_failures_per_reviewer"].items()))
    lines.append("accepted rationales per teacher: " + ", ".join(
        f"{t} {v['accepted']}/{v['written']}" for t, v in stats["accepted_per_teacher"].items()))
    lines.append("questions by number of accepted rationales: " + ", ".join(
        f"{k}: {n}" for k, n in stats["questions_by_accepted_rationales"].items()))
    return "\n".join(lines)
