//! The gateway's Prometheus metrics, per logical model, target and gateway key: requests by
//! outcome, attempts by result (errors by class), answer time and time to first token, tokens
//! in and out, cache hits, fallbacks and limit rejections.

use std::fmt::Write;

use flowgate_engine::decimal::Decimal;
use flowgate_metrics::{Counters, Histograms, label};

/// Costs are counted in units of 10^-7, the precision Dify quantizes prices to.
const COST_EXPONENT: i32 = -7;

#[derive(Default)]
pub struct GatewayMetrics {
    /// (model, outcome: ok | error | limited | cache_hit).
    requests: Counters<(String, &'static str)>,
    /// (model, target, result: ok or the error class).
    attempts: Counters<(String, String, &'static str)>,
    /// (model, target): complete answers.
    answer_time: Histograms<(String, String)>,
    /// (model, target): streams, until the first token.
    first_token: Histograms<(String, String)>,
    /// (model, target, prompt | completion).
    tokens: Counters<(String, String, &'static str)>,
    /// (model, target, currency): spend in ten-millionths, Dify's price quantum.
    cost: Counters<(String, String, String)>,
    /// (requested model, serving model).
    fallbacks: Counters<(String, String)>,
    /// Limit rule.
    limited: Counters<String>,
    /// Gateway key name.
    keys: Counters<String>,
    /// (gateway key name, prompt | completion).
    key_tokens: Counters<(String, &'static str)>,
    /// (gateway key name, currency): spend in ten-millionths.
    key_cost: Counters<(String, String)>,
    /// (app id, prompt | completion): model nodes' tokens.
    app_tokens: Counters<(String, &'static str)>,
    /// (app id, currency): model nodes' spend in ten-millionths.
    app_cost: Counters<(String, String)>,
}

/// Who a call is charged to, besides its model and target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Payer<'a> {
    /// The gateway key of a call through the OpenAI-compatible endpoint.
    pub key: Option<&'a str>,
    /// The app of a model node.
    pub app: Option<&'a str>,
}

impl GatewayMetrics {
    pub(crate) fn request(&self, model: &str, outcome: &'static str) {
        self.requests.add(&(model.to_owned(), outcome), 1);
    }

    pub(crate) fn attempt(&self, model: &str, target: &str, result: &'static str) {
        self.attempts.add(&(model.to_owned(), target.to_owned(), result), 1);
    }

    pub(crate) fn answered(&self, model: &str, target: &str, seconds: f64, streaming: bool) {
        let key = (model.to_owned(), target.to_owned());
        if streaming { self.first_token.observe(&key, seconds) } else { self.answer_time.observe(&key, seconds) }
    }

    pub(crate) fn fallback(&self, requested: &str, served: &str) {
        self.fallbacks.add(&(requested.to_owned(), served.to_owned()), 1);
    }

    pub(crate) fn limited(&self, rule: &str) {
        self.limited.add(&rule.to_owned(), 1);
    }

    /// A call through the OpenAI-compatible endpoint with this gateway key.
    pub fn key_used(&self, name: &str) {
        self.keys.add(&name.to_owned(), 1);
    }

    /// Tokens a call used, as the upstream reported them, and what they cost; per gateway key
    /// or app too (for chargeback).
    pub(crate) fn usage(&self, model: &str, target: &str, prompt: u64, completion: u64, cost: Option<(Decimal, &str)>, payer: Payer<'_>) {
        self.tokens.add(&(model.to_owned(), target.to_owned(), "prompt"), prompt);
        self.tokens.add(&(model.to_owned(), target.to_owned(), "completion"), completion);
        let charged = [(payer.key, &self.key_tokens, &self.key_cost), (payer.app, &self.app_tokens, &self.app_cost)];
        for (who, tokens, _) in &charged {
            if let Some(who) = who {
                tokens.add(&((*who).to_owned(), "prompt"), prompt);
                tokens.add(&((*who).to_owned(), "completion"), completion);
            }
        }
        if let Some((amount, currency)) = cost {
            let units = u64::try_from(amount.in_units_of(COST_EXPONENT)).unwrap_or(0);
            self.cost.add(&(model.to_owned(), target.to_owned(), currency.to_owned()), units);
            for (who, _, spend) in &charged {
                if let Some(who) = who {
                    spend.add(&((*who).to_owned(), currency.to_owned()), units);
                }
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        header(out, "flowgate_gateway_requests_total", "counter", "Model calls by logical model and outcome.");
        for ((model, outcome), count) in self.requests.sorted() {
            let _ = writeln!(out, "flowgate_gateway_requests_total{{model=\"{}\",outcome=\"{outcome}\"}} {count}", label(&model));
        }
        header(out, "flowgate_gateway_attempts_total", "counter", "Upstream attempts by model, target and result (ok or the error class).");
        for ((model, target, result), count) in self.attempts.sorted() {
            let _ = writeln!(
                out,
                "flowgate_gateway_attempts_total{{model=\"{}\",target=\"{}\",result=\"{result}\"}} {count}",
                label(&model),
                label(&target)
            );
        }
        header(out, "flowgate_gateway_answer_seconds", "histogram", "Time to a complete answer, by model and target.");
        for ((model, target), histogram) in self.answer_time.sorted() {
            histogram.render(out, "flowgate_gateway_answer_seconds", &format!("model=\"{}\",target=\"{}\"", label(&model), label(&target)));
        }
        header(out, "flowgate_gateway_first_token_seconds", "histogram", "Time to the first streamed token, by model and target.");
        for ((model, target), histogram) in self.first_token.sorted() {
            histogram.render(
                out,
                "flowgate_gateway_first_token_seconds",
                &format!("model=\"{}\",target=\"{}\"", label(&model), label(&target)),
            );
        }
        header(out, "flowgate_gateway_tokens_total", "counter", "Tokens by model, target and direction, as upstreams reported them.");
        for ((model, target, direction), count) in self.tokens.sorted() {
            let _ = writeln!(
                out,
                "flowgate_gateway_tokens_total{{model=\"{}\",target=\"{}\",direction=\"{direction}\"}} {count}",
                label(&model),
                label(&target)
            );
        }
        header(out, "flowgate_gateway_cost_total", "counter", "Spend by model, target and currency, from the models file's pricing.");
        for ((model, target, currency), units) in self.cost.sorted() {
            let _ = writeln!(
                out,
                "flowgate_gateway_cost_total{{model=\"{}\",target=\"{}\",currency=\"{}\"}} {}",
                label(&model),
                label(&target),
                label(&currency),
                units as f64 / 1e7
            );
        }
        header(out, "flowgate_gateway_fallbacks_total", "counter", "Calls served by a fallback model.");
        for ((requested, served), count) in self.fallbacks.sorted() {
            let _ = writeln!(
                out,
                "flowgate_gateway_fallbacks_total{{model=\"{}\",served_by=\"{}\"}} {count}",
                label(&requested),
                label(&served)
            );
        }
        header(out, "flowgate_gateway_limit_rejections_total", "counter", "Calls refused by a limit rule.");
        for (rule, count) in self.limited.sorted() {
            let _ = writeln!(out, "flowgate_gateway_limit_rejections_total{{rule=\"{}\"}} {count}", label(&rule));
        }
        header(out, "flowgate_gateway_key_requests_total", "counter", "Calls through the OpenAI-compatible endpoint by gateway key.");
        for (key, count) in self.keys.sorted() {
            let _ = writeln!(out, "flowgate_gateway_key_requests_total{{key=\"{}\"}} {count}", label(&key));
        }
        header(out, "flowgate_gateway_key_tokens_total", "counter", "Tokens by gateway key and direction, as upstreams reported them.");
        for ((key, direction), count) in self.key_tokens.sorted() {
            let _ = writeln!(out, "flowgate_gateway_key_tokens_total{{key=\"{}\",direction=\"{direction}\"}} {count}", label(&key));
        }
        header(out, "flowgate_gateway_key_cost_total", "counter", "Spend by gateway key and currency, from the models file's pricing.");
        for ((key, currency), units) in self.key_cost.sorted() {
            let _ = writeln!(
                out,
                "flowgate_gateway_key_cost_total{{key=\"{}\",currency=\"{}\"}} {}",
                label(&key),
                label(&currency),
                units as f64 / 1e7
            );
        }
        header(out, "flowgate_gateway_app_tokens_total", "counter", "Model nodes' tokens by app and direction.");
        for ((app, direction), count) in self.app_tokens.sorted() {
            let _ = writeln!(out, "flowgate_gateway_app_tokens_total{{app=\"{}\",direction=\"{direction}\"}} {count}", label(&app));
        }
        header(
            out,
            "flowgate_gateway_app_cost_total",
            "counter",
            "Model nodes' spend by app and currency, from the models file's pricing.",
        );
        for ((app, currency), units) in self.app_cost.sorted() {
            let _ = writeln!(
                out,
                "flowgate_gateway_app_cost_total{{app=\"{}\",currency=\"{}\"}} {}",
                label(&app),
                label(&currency),
                units as f64 / 1e7
            );
        }
    }
}
