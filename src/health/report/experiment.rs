//! The `experiment vanishing --report` page: the configurations, their claims and
//! verdicts, and each one's batch loss and gradient heatmap on one colour scale.

use super::charts::*;
use super::*;

/// The `experiment` command's page: the configurations side by side with their claims
/// and whether each held, then each configuration's batch loss and gradient heatmap, the
/// heatmaps on one colour scale so they compare.
pub struct ExperimentReport<'a> {
    pub command: String,
    pub device: String,
    pub data: String,
    /// The shared settings in words (depth, width, batch, epochs, learning rate).
    pub setup: String,
    /// Configurations the experiment runs; `outcomes` may hold fewer while it runs.
    pub planned: usize,
    pub outcomes: &'a [Outcome],
    pub verdicts: &'a [ExperimentVerdict],
}

impl ExperimentReport<'_> {
    pub fn html(&self) -> String {
        let mut h = page_start("experiment vanishing");
        let done = self.outcomes.len();
        let held = self.verdicts.iter().filter(|v| v.holds).count();
        let (class, status) = if done < self.planned {
            (
                "",
                format!("in progress: {done} of {} configurations", self.planned),
            )
        } else if held == self.verdicts.len() {
            ("ok", format!("all {held} claims hold"))
        } else {
            (
                "bad",
                format!("{held} of {} claims hold", self.verdicts.len()),
            )
        };
        let _ = writeln!(
            h,
            "<p><span class=\"status {class}\">{}</span></p>",
            esc(&status)
        );
        let _ = writeln!(
            h,
            "<dl><dt>written</dt><dd>{}</dd><dt>command</dt><dd><code>{}</code></dd>\
             <dt>device</dt><dd>{}</dd><dt>data</dt><dd>{}</dd><dt>setup</dt><dd>{}</dd></dl>",
            utc_now(),
            esc(&self.command),
            esc(&self.device),
            esc(&self.data),
            esc(&self.setup)
        );
        h.push_str(
            "<h2>Configurations</h2>\n<div class=scroll><table><tr><th>configuration</th>\
             <th>lr</th><th>‖∇W₀‖/‖∇Wₗ‖ first</th><th>at end</th><th>final loss</th>\
             <th>val acc</th><th>claim</th><th>detectors</th><th>s</th></tr>\n",
        );
        for o in self.outcomes {
            let verdict = self.verdicts.iter().find(|v| v.label == o.label);
            let claim = match verdict {
                Some(v) if v.holds => "holds".to_string(),
                Some(_) => "<span class=bad>does NOT hold</span>".to_string(),
                None => "–".to_string(),
            };
            let detectors = match &o.diverged {
                Some(d) => format!("<span class=bad>NaN at step {}</span>", d.step),
                None if o.warnings.is_empty() => "healthy".to_string(),
                None => esc(&o
                    .warnings
                    .iter()
                    .map(|w| w.name())
                    .collect::<Vec<_>>()
                    .join(", ")),
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td class=text>{claim}</td><td class=text>{detectors}</td><td>{:.1}</td></tr>",
                esc(&o.label),
                // As written on the command line: 0.6, not the f32 product 0.59999996.
                format!("{:.6}", o.lr)
                    .trim_end_matches('0')
                    .trim_end_matches('.'),
                num(o.ratio_start),
                num(o.ratio_end),
                num(o.final_loss),
                pct(o.accuracy),
                o.seconds
            );
        }
        h.push_str("</table></div>\n");
        if !self.verdicts.is_empty() {
            h.push_str("<h2>Claims</h2>\n<ul class=verdicts>\n");
            for v in self.verdicts {
                let _ = writeln!(
                    h,
                    "<li><b>{}</b> — {}: {}</li>",
                    esc(&v.label),
                    esc(&v.claim),
                    esc(&v.line())
                );
            }
            h.push_str("</ul>\n");
        }
        let range = log_range(
            self.outcomes
                .iter()
                .flat_map(|o| o.stats.iter())
                .flat_map(|s| s.layers.iter())
                .filter_map(|l| l.weight_grad_norm)
                .filter(|g| g.is_finite() && *g > 0.0)
                .map(|g| (g as f64).log10()),
        );
        for (i, o) in self.outcomes.iter().enumerate() {
            let _ = writeln!(h, "<h2>{}</h2>", esc(&o.label));
            if let Some(nf) = &o.diverged {
                let _ = writeln!(h, "<div class=stop>{}</div>", esc(&nf.to_string()));
            }
            let batch = [Series {
                name: "batch loss",
                color: "#1f77b4",
                points: o.stats.iter().map(|s| (s.step as f64, s.loss)).collect(),
            }];
            h.push_str(&line_chart(
                "Batch loss at statistics steps",
                "training step",
                &batch,
                &format!("batch-chart-{i}"),
            ));
            h.push_str(&heatmap(
                "‖∇W‖ per layer (log₁₀, one scale for all configurations)",
                &o.stats,
                grad_value,
                &format!("gradient-heatmap-{i}"),
                Some(range),
            ));
        }
        h.push_str("</body></html>\n");
        h
    }

    /// Writes the page to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_atomic(path, self.html().as_bytes())
    }
}
