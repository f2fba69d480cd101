//! The status page, rendered on the server: plain HTML with inline SVG charts, no
//! script and nothing fetched from elsewhere (the page must work offline).
//!
//! Every string that comes from a job or a task (ids, failure messages, which quote the
//! task's decline reason) goes through [`escape`].

use crate::coordinator::CoreError;
use crate::coordinator::stats::{JobStats, SnapshotStats, SnapshotStatus};
use crate::metrics::{ServerStatus, Serving, kind_label};
use http::StatusCode;
use std::fmt::Write;

/// A rendered page and the status it is served with.
pub struct Page {
    pub status: StatusCode,
    pub html: String,
}

/// Width and height of one chart, in SVG user units (pixels).
const CHART_WIDTH: f64 = 720.0;
const CHART_HEIGHT: f64 = 170.0;
/// Room for the y labels on the left and the x labels below.
const CHART_LEFT: f64 = 70.0;
const CHART_BOTTOM: f64 = 24.0;
const CHART_TOP: f64 = 12.0;

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f2f2f2}.failed{color:#b00020}.completed{color:#1b5e20}\
.note{background:#fff4e5;border:1px solid #f0b060;padding:.5em .8em}\
svg{display:block;margin:.25em 0 1em 0}";

/// Replaces the characters with a meaning in HTML (text and quoted attributes).
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        escape(title)
    )
}

/// The paragraph that says what this server does, and for a follower who leads.
fn role(status: &ServerStatus, serving: &Serving) -> String {
    match serving {
        Serving::Leading(term) if status.high_availability() => format!(
            "<p id=\"role\">This replica is the <strong>leader</strong> \
             (leadership epoch {}).</p>\n",
            term.streams.leader_epoch()
        ),
        Serving::Leading(_) => "<p id=\"role\">Serving.</p>\n".to_string(),
        Serving::NotServing { reason, leader } => {
            let mut html = String::from("<p id=\"role\" class=\"note\">");
            if status.high_availability() {
                html.push_str("This replica is a <strong>follower</strong>");
            } else {
                html.push_str("This server is <strong>not serving</strong>");
            }
            let _ = write!(html, " ({}). ", escape(reason));
            match leader {
                Some(leader) => {
                    let _ = write!(
                        html,
                        "The leader is <strong id=\"leader\">{}</strong>; its status page shows the jobs.",
                        escape(leader)
                    );
                }
                None if status.high_availability() => html.push_str("No leader is known yet."),
                None => {}
            }
            html.push_str("</p>\n");
            html
        }
    }
}

/// `/`: what this server does and, while it serves, its jobs with links.
pub fn index(status: &ServerStatus) -> Page {
    let serving = status.current();
    let mut body = String::from("<h1>savepoint-coordinator</h1>\n");
    body.push_str(&role(status, &serving));
    if let Serving::Leading(term) = &serving {
        let job_ids = term.coordinator.job_ids();
        let _ = writeln!(
            body,
            "<p>{} job(s) registered; {} task manager(s) connected. \
             Metrics: <a href=\"/metrics\">/metrics</a>.</p>",
            job_ids.len(),
            term.streams.connected()
        );
        if !job_ids.is_empty() {
            body.push_str(
                "<table id=\"jobs\"><tr><th>job</th><th>status</th><th>pending</th>\
                 <th>completed</th><th>failed</th><th>latest completed</th></tr>\n",
            );
            for job_id in &job_ids {
                let Ok(stats) = term.coordinator.job_stats(job_id.as_str()) else {
                    continue;
                };
                let latest = stats
                    .latest_completed
                    .as_ref()
                    .map(|s| format!("{} {}", kind_label(s.kind), s.checkpoint_id))
                    .unwrap_or_else(|| "none".to_string());
                let id = escape(job_id.as_str());
                let _ = writeln!(
                    body,
                    "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td></tr>",
                    stats.job_status, stats.in_progress, stats.completed, stats.failed, latest
                );
            }
            body.push_str("</table>\n");
        }
    }
    Page {
        status: StatusCode::OK,
        html: document("savepoint-coordinator", &body),
    }
}

/// `/jobs/<job_id>`: one job's counts, pending snapshots and snapshot history.
pub fn job(status: &ServerStatus, job_id: &str) -> Page {
    let serving = status.current();
    let term = match &serving {
        Serving::Leading(term) => term,
        Serving::NotServing { .. } => {
            let body = format!(
                "<h1>Job {}</h1>\n{}<p><a href=\"/\">All jobs</a></p>\n",
                escape(job_id),
                role(status, &serving)
            );
            return Page {
                status: StatusCode::SERVICE_UNAVAILABLE,
                html: document(&format!("Job {job_id}"), &body),
            };
        }
    };
    let stats = match term.coordinator.job_stats(job_id) {
        Ok(stats) => stats,
        Err(CoreError::JobNotFound(_)) => return not_found(&format!("/jobs/{job_id}")),
        Err(error) => {
            let body = format!(
                "<h1>Job {}</h1>\n<p class=\"failed\">The job cannot be shown: {}</p>\n",
                escape(job_id),
                escape(&error.to_string())
            );
            return Page {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                html: document(&format!("Job {job_id}"), &body),
            };
        }
    };
    let mut body = format!(
        "<p><a href=\"/\">All jobs</a></p>\n<h1>Job <span id=\"job-id\">{}</span></h1>\n",
        escape(job_id)
    );
    body.push_str(&role(status, &serving));
    body.push_str(&counts(&stats));
    body.push_str(&pending(&stats));
    body.push_str(&history(&stats));
    Page {
        status: StatusCode::OK,
        html: document(&format!("Job {job_id}"), &body),
    }
}

/// Any other path, or a job that is not registered.
pub fn not_found(path: &str) -> Page {
    let body = format!(
        "<h1>Not found</h1>\n<p>Nothing is served at <code>{}</code>. \
         <a href=\"/\">All jobs</a></p>\n",
        escape(path)
    );
    Page {
        status: StatusCode::NOT_FOUND,
        html: document("Not found", &body),
    }
}

fn counts(stats: &JobStats) -> String {
    let mut html = format!(
        "<table id=\"counts\"><tr><th>status</th><td>{}{}</td></tr>\
         <tr><th>triggered</th><td>{}</td></tr><tr><th>in progress</th><td>{}</td></tr>\
         <tr><th>completed</th><td id=\"completed-count\">{}</td></tr>\
         <tr><th>failed</th><td id=\"failed-count\">{}</td></tr>\
         <tr><th>restored</th><td>{}</td></tr>\
         <tr><th>discarded (late or unknown) acknowledgements</th><td>{}</td></tr>",
        stats.job_status,
        if stats.failing {
            " <span class=\"failed\">(failing: too many consecutive checkpoint failures)</span>"
        } else {
            ""
        },
        stats.triggered,
        stats.in_progress,
        stats.completed,
        stats.failed,
        stats.restored,
        stats.discarded_acks,
    );
    for (reason, count) in &stats.failed_by_reason {
        let _ = write!(
            html,
            "<tr><th>failed: {}</th><td>{count}</td></tr>",
            reason.as_str()
        );
    }
    let _ = writeln!(
        html,
        "<tr><th>duration (completed)</th><td>min {} / avg {} / max {}</td></tr>\
         <tr><th>size (completed)</th><td>min {} / avg {} / max {}</td></tr></table>",
        duration(stats.duration_ms.min),
        duration(stats.duration_ms.avg),
        duration(stats.duration_ms.max),
        size(stats.state_size_bytes.min),
        size(stats.state_size_bytes.avg),
        size(stats.state_size_bytes.max),
    );
    html
}

fn pending(stats: &JobStats) -> String {
    let pending: Vec<&SnapshotStats> = stats
        .history
        .iter()
        .filter(|s| s.status == SnapshotStatus::InProgress)
        .collect();
    let mut html = String::from("<h2>Pending snapshots</h2>\n");
    if pending.is_empty() {
        html.push_str("<p id=\"pending\">No snapshot is pending.</p>\n");
        return html;
    }
    html.push_str(
        "<table id=\"pending\"><tr><th>id</th><th>kind</th><th>triggered</th>\
         <th>acknowledgements</th></tr>\n",
    );
    for snapshot in pending {
        let _ = writeln!(
            html,
            "<tr class=\"pending\"><td>{}</td><td>{}</td><td>{}</td>\
             <td><progress value=\"{}\" max=\"{}\"></progress> \
             <span class=\"progress\">{}/{} acknowledged</span></td></tr>",
            snapshot.checkpoint_id,
            kind_label(snapshot.kind),
            timestamp(snapshot.trigger_timestamp_ms),
            snapshot.acknowledged_subtasks,
            snapshot.total_subtasks.max(1),
            snapshot.acknowledged_subtasks,
            snapshot.total_subtasks,
        );
    }
    html.push_str("</table>\n");
    html
}

fn history(stats: &JobStats) -> String {
    // Oldest first, as a chart reads left to right.
    let mut finished: Vec<&SnapshotStats> = stats
        .history
        .iter()
        .filter(|s| s.status != SnapshotStatus::InProgress)
        .collect();
    finished.sort_by_key(|s| s.checkpoint_id);
    let completed = finished
        .iter()
        .filter(|s| s.status == SnapshotStatus::Completed)
        .count();
    let mut html = format!(
        "<h2>Snapshot history</h2>\n<p id=\"history-summary\">The last {} finished snapshots: \
         {completed} completed, {} failed.</p>\n",
        finished.len(),
        finished.len() - completed
    );
    if finished.is_empty() {
        return html;
    }
    html.push_str(
        "<p class=\"legend\"><span style=\"color:#1f77b4\">\u{25a0}</span> checkpoint \
         <span style=\"color:#2ca02c\">\u{25a0}</span> savepoint \
         <span style=\"color:#b00020\">\u{2715}</span> failed (hover for the reason)</p>\n",
    );
    html.push_str("<h3>Duration</h3>\n");
    html.push_str(&chart("duration-chart", &finished, |s| {
        (s.duration_ms as f64, duration(s.duration_ms))
    }));
    html.push_str("<h3>State size</h3>\n");
    html.push_str(&chart("size-chart", &finished, |s| {
        (s.state_size_bytes as f64, size(s.state_size_bytes))
    }));
    html.push_str(
        "<table id=\"history\"><tr><th>id</th><th>kind</th><th>outcome</th><th>triggered</th>\
         <th>duration</th><th>size</th><th>details</th></tr>\n",
    );
    for snapshot in finished.iter().rev() {
        let (outcome, details) = match &snapshot.failure {
            Some(failure) if snapshot.status == SnapshotStatus::Failed => (
                format!(
                    "<span class=\"failed\">FAILED: {}</span>",
                    failure.reason.as_str()
                ),
                escape(&failure.message),
            ),
            _ => (
                "<span class=\"completed\">completed</span>".to_string(),
                snapshot.path.as_deref().map(escape).unwrap_or_default(),
            ),
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{outcome}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{details}</td></tr>",
            snapshot.checkpoint_id,
            kind_label(snapshot.kind),
            timestamp(snapshot.trigger_timestamp_ms),
            duration(snapshot.duration_ms),
            size(snapshot.state_size_bytes),
        );
    }
    html.push_str("</table>\n");
    html
}

/// A bar per completed snapshot (height: `value`), a red cross on a dashed line per
/// failed one, oldest on the left.
fn chart(
    id: &str,
    snapshots: &[&SnapshotStats],
    value: impl Fn(&SnapshotStats) -> (f64, String),
) -> String {
    let plot_width = CHART_WIDTH - CHART_LEFT - 10.0;
    let plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM;
    let baseline = CHART_TOP + plot_height;
    let max = snapshots
        .iter()
        .filter(|s| s.status == SnapshotStatus::Completed)
        .map(|s| value(s).0)
        .fold(0.0, f64::max);
    let max_label = snapshots
        .iter()
        .filter(|s| s.status == SnapshotStatus::Completed)
        .max_by(|a, b| value(a).0.total_cmp(&value(b).0))
        .map(|s| value(s).1)
        .unwrap_or_default();
    let slot = plot_width / snapshots.len() as f64;
    let bar_width = (slot * 0.7).min(40.0);
    let mut svg = format!(
        "<svg id=\"{id}\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" \
         viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\" \
         xmlns=\"http://www.w3.org/2000/svg\">\n\
         <line x1=\"{CHART_LEFT}\" y1=\"{baseline}\" x2=\"{}\" y2=\"{baseline}\" stroke=\"#888\"/>\n\
         <line x1=\"{CHART_LEFT}\" y1=\"{CHART_TOP}\" x2=\"{CHART_LEFT}\" y2=\"{baseline}\" stroke=\"#888\"/>\n\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n\
         <text x=\"{}\" y=\"{baseline}\" font-size=\"11\" text-anchor=\"end\">0</text>\n",
        CHART_LEFT + plot_width,
        CHART_LEFT - 4.0,
        CHART_TOP + 10.0,
        escape(&max_label),
        CHART_LEFT - 4.0,
    );
    for (i, snapshot) in snapshots.iter().enumerate() {
        let center = CHART_LEFT + slot * (i as f64 + 0.5);
        let kind = kind_label(snapshot.kind);
        let id = snapshot.checkpoint_id;
        let (amount, label) = value(snapshot);
        match (&snapshot.failure, snapshot.status) {
            (Some(failure), SnapshotStatus::Failed) => {
                let _ = writeln!(
                    svg,
                    "<g class=\"failure-marker\" data-checkpoint-id=\"{id}\">\
                     <title>{kind} {id} failed: {}: {}</title>\
                     <line x1=\"{center:.1}\" y1=\"{CHART_TOP}\" x2=\"{center:.1}\" y2=\"{baseline}\" \
                     stroke=\"#b00020\" stroke-dasharray=\"4 3\"/>\
                     <text x=\"{center:.1}\" y=\"{:.1}\" fill=\"#b00020\" font-size=\"16\" \
                     text-anchor=\"middle\">\u{2715}</text></g>",
                    failure.reason.as_str(),
                    escape(&failure.message),
                    baseline - 4.0,
                );
            }
            _ => {
                let height = if max > 0.0 {
                    (amount / max * plot_height).max(1.0)
                } else {
                    1.0
                };
                let fill = match snapshot.kind {
                    crate::coordinator::model::SnapshotKind::Checkpoint => "#1f77b4",
                    crate::coordinator::model::SnapshotKind::Savepoint => "#2ca02c",
                };
                let _ = writeln!(
                    svg,
                    "<rect class=\"bar\" data-checkpoint-id=\"{id}\" x=\"{:.1}\" y=\"{:.1}\" \
                     width=\"{bar_width:.1}\" height=\"{height:.1}\" fill=\"{fill}\">\
                     <title>{kind} {id}: {}</title></rect>",
                    center - bar_width / 2.0,
                    baseline - height,
                    escape(&label),
                );
            }
        }
        let _ = writeln!(
            svg,
            "<text x=\"{center:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{id}</text>",
            baseline + 14.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn timestamp(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(size(10), "10 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(duration(999), "999 ms");
        assert_eq!(duration(1500), "1.50 s");
    }
}
