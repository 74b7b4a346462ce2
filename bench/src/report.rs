//! The run's results: rows of the printed table, and the JSON document that
//! the charts and the summary are made from.

use serde_json::{json, Map, Value};

use crate::util::{BoxErr, Lat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    Info,
    Error,
}

impl Verdict {
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "-",
            Verdict::Error => "ERROR",
        }
    }
}

pub struct Row {
    pub id: &'static str,
    pub contender: String,
    pub value: String,
    pub ratio: String,
    pub goal: String,
    pub verdict: Verdict,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub json: Map<String, Value>,
}

impl Report {
    pub fn row(
        &mut self,
        id: &'static str,
        contender: impl Into<String>,
        value: impl Into<String>,
        ratio: impl Into<String>,
        goal: impl Into<String>,
        verdict: Verdict,
    ) {
        self.rows.push(Row {
            id,
            contender: contender.into(),
            value: value.into(),
            ratio: ratio.into(),
            goal: goal.into(),
            verdict,
        });
    }

    /// A scenario that failed: a row, and `{"error": ...}` in the JSON.
    pub fn error(&mut self, id: &'static str, e: BoxErr) {
        eprintln!("{id}: ERROR: {e}");
        self.row(
            id,
            "(scenario failed)",
            e.to_string(),
            "",
            "",
            Verdict::Error,
        );
        self.json
            .insert(id.to_lowercase(), json!({ "error": e.to_string() }));
    }

    /// The rows as JSON (for the results file).
    pub fn table_json(&self) -> Value {
        self.rows
            .iter()
            .map(|r| {
                json!({"id": r.id, "contender": r.contender, "value": r.value, "ratio": r.ratio,
                       "goal": r.goal, "result": r.verdict.as_str()})
            })
            .collect()
    }

    /// The table on stdout, columns aligned.
    pub fn print(&self) {
        let headers = ["id", "contender", "value", "ratio", "goal", "result"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.id.to_owned(),
                    r.contender.clone(),
                    r.value.clone(),
                    r.ratio.clone(),
                    r.goal.clone(),
                    r.verdict.as_str().to_owned(),
                ]
            })
            .collect();
        let mut w = headers.map(|h| h.chars().count());
        for c in &cells {
            for (i, s) in c.iter().enumerate() {
                w[i] = w[i].max(s.chars().count());
            }
        }
        let line = |c: &[String]| {
            let parts: Vec<String> = c
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{s}{}", " ".repeat(w[i] - s.chars().count())))
                .collect();
            println!("| {} |", parts.join(" | "));
        };
        line(&headers.map(str::to_owned));
        let rule: Vec<String> = w.iter().map(|n| "-".repeat(n + 2)).collect();
        println!("|{}|", rule.join("|"));
        for c in &cells {
            line(c);
        }
    }
}

pub fn lat_value(l: &Lat) -> String {
    format!("p50 {:.1} / p99 {:.1} µs", l.median, l.p99)
}
