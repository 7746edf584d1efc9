//! `loom thread show` as readable Markdown.

use std::fmt::Write;

use crate::store::ThreadDetail;
use crate::wire::EventKind;

/// Longest event text shown in full; longer text is cut with a note (`--json` has all of it).
const SHOW_TEXT_MAX: usize = 4000;

fn time(ms: i64) -> String {
    // UTC, no dependency on a date crate: days since the epoch to a civil date.
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Formats an epoch-milliseconds time as `YYYY-MM-DD HH:MM:SSZ`.
pub fn format_time(ms: i64) -> String {
    time(ms)
}

fn fence(out: &mut String, text: &str) {
    let shown = crate::text::truncate_str(text, SHOW_TEXT_MAX);
    // A fence longer than any backtick run inside keeps the block closed.
    let mut ticks = 3;
    let mut run = 0;
    for c in shown.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        ticks = ticks.max(run + 1);
    }
    let f = "`".repeat(ticks);
    let _ = writeln!(out, "{f}\n{shown}\n{f}");
    if shown.len() < text.len() {
        let _ = writeln!(out, "_({} more bytes; `loom thread show --json` has all of it)_", text.len() - shown.len());
    }
}

/// The thread as Markdown: a header, then one section per iteration with every step.
pub fn render_markdown(t: &ThreadDetail) -> String {
    let s = &t.summary;
    let mut out = String::new();
    let title = if s.title.is_empty() { "(untitled)" } else { &s.title };
    let _ = writeln!(out, "# Thread {}: {title}\n", s.id);
    let _ = writeln!(out, "- weaver: `{}`", s.weaver_id);
    let _ = writeln!(out, "- started: {}", time(s.started_ms));
    match s.ended_ms {
        Some(e) => {
            let _ = writeln!(out, "- ended: {}", time(e));
        }
        None => {
            let _ = writeln!(out, "- ended: (still running)");
        }
    }
    let _ = writeln!(out, "- iterations: {}", s.iteration);
    if let Some(r) = &s.stop_reason {
        let _ = writeln!(out, "- stop reason: {r}");
    }
    let _ = writeln!(out, "- events: {}", s.event_count);
    let mut iteration = None;
    for e in &t.events {
        if iteration != Some(e.iteration) && e.iteration > 0 {
            iteration = Some(e.iteration);
            let _ = writeln!(out, "\n## Iteration {}", e.iteration);
        }
        let at = time(e.ts_ms);
        let _ = writeln!(out);
        match e.kind {
            EventKind::ToolCall => {
                let name = e.payload.get("name").and_then(|v| v.as_str()).unwrap_or("tool");
                let _ = writeln!(out, "### #{} tool call `{name}` ({at})", e.seq);
                fence(&mut out, &e.text);
            }
            EventKind::ToolResult => {
                let err = e.payload.get("is_error").and_then(|v| v.as_bool()) == Some(true);
                let _ = writeln!(out, "### #{} tool result{} ({at})", e.seq, if err { " (error)" } else { "" });
                fence(&mut out, &e.text);
            }
            EventKind::ModelReply | EventKind::ModelRequest => {
                let _ = writeln!(out, "### #{} {} ({at})\n", e.seq, e.kind.as_str().replace('_', " "));
                let shown = crate::text::truncate_str(&e.text, SHOW_TEXT_MAX);
                let _ = writeln!(out, "{shown}");
                if shown.len() < e.text.len() {
                    let _ = writeln!(out, "\n_(cut; `--json` has all of it)_");
                }
            }
            EventKind::CheckResult | EventKind::Output | EventKind::Error => {
                let _ = writeln!(out, "### #{} {} ({at})", e.seq, e.kind.as_str().replace('_', " "));
                fence(&mut out, &e.text);
            }
            _ => {
                let _ = writeln!(
                    out,
                    "**#{} {}** ({at}): {}",
                    e.seq,
                    e.kind.as_str().replace('_', " "),
                    crate::text::truncate_str(&e.text, SHOW_TEXT_MAX)
                );
            }
        }
    }
    out
}

/// A thread condensed as context for another agent (`--context-thread`): the prompt's title,
/// what the model said, the tools it called and the start of what they returned, commits,
/// checks and the stop reason, cut to at most `max_bytes` (keeping the end, where the
/// conclusions are).
pub fn render_context(t: &ThreadDetail, max_bytes: usize) -> String {
    let s = &t.summary;
    let mut out = format!("Thread {} (weaver {}): {}\n", s.id, s.weaver_id, s.title);
    if let Some(r) = &s.stop_reason {
        let _ = writeln!(out, "Stopped: {r}");
    }
    for e in &t.events {
        let line = match e.kind {
            EventKind::ModelReply if !e.text.trim().is_empty() => {
                format!("[it {}] model: {}", e.iteration, e.text.trim())
            }
            EventKind::ToolCall => format!("[it {}] tool: {}", e.iteration, crate::text::truncate_str(&e.text, 300)),
            EventKind::ToolResult => {
                format!("[it {}] result: {}", e.iteration, crate::text::truncate_str(e.text.trim(), 300))
            }
            EventKind::Commit | EventKind::CheckResult | EventKind::Error | EventKind::Output => {
                format!("[it {}] {}: {}", e.iteration, e.kind.as_str(), crate::text::truncate_str(e.text.trim(), 500))
            }
            _ => continue,
        };
        out.push_str(&line);
        out.push('\n');
    }
    if out.len() <= max_bytes {
        return out;
    }
    let mut start = out.len() - max_bytes.saturating_sub(40);
    while !out.is_char_boundary(start) {
        start += 1;
    }
    format!("[earlier steps cut]\n{}", &out[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_763_724_347_000), "2025-11-21 11:25:47Z");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn fences_outgrow_backticks_inside() {
        let mut s = String::new();
        fence(&mut s, "a ```` b");
        assert!(s.starts_with("`````\n"), "{s}");
    }
}
