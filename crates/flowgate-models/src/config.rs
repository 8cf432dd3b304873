//! The models file: logical models and their targets, the mapping from the provider and model
//! names in Dify DSLs to logical models, the default model and the gateway's API keys. Secrets
//! come from the environment (`${VAR}`); errors name the line and never show a secret.

use std::collections::HashSet;
use std::time::Duration;

use flowgate_engine::decimal::Decimal;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::cache::CacheBackend;
use crate::limits::{Backend, LimitBy, LimitsConfig, OnRedisError, Quota, Resource, Rule};

/// Everything wrong with a models file, each with its line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub line: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    models: Vec<Spanned<RawModel>>,
    #[serde(default)]
    dify: Vec<Spanned<RawMapping>>,
    #[serde(default)]
    default: Option<Spanned<String>>,
    #[serde(default)]
    gateway_keys: Vec<Spanned<RawGatewayKey>>,
    #[serde(default)]
    limits: Option<Spanned<RawLimits>>,
    #[serde(default)]
    cache: Option<Spanned<RawCacheBackend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheBackend {
    backend: String,
    #[serde(default)]
    redis_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    redis_url: Option<String>,
    /// What happens to calls while Redis cannot be reached: `allow` or `deny`. Required with
    /// the Redis backend: there is no safe default between spending unchecked and refusing.
    #[serde(default)]
    on_redis_error: Option<String>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    limit_by: String,
    #[serde(default, rename = "match")]
    matching: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    requests_per_second: Option<u64>,
    #[serde(default)]
    requests_per_minute: Option<u64>,
    #[serde(default)]
    requests_per_hour: Option<u64>,
    #[serde(default)]
    requests_per_day: Option<u64>,
    #[serde(default)]
    tokens_per_second: Option<u64>,
    #[serde(default)]
    tokens_per_minute: Option<u64>,
    #[serde(default)]
    tokens_per_hour: Option<u64>,
    #[serde(default)]
    tokens_per_day: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    #[serde(default)]
    routing: Option<String>,
    targets: Vec<Spanned<RawTarget>>,
    #[serde(default)]
    fallbacks: Vec<String>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    cache: Option<RawCache>,
    /// The output cap assumed for token limits when a request sets none.
    #[serde(default)]
    default_max_tokens: Option<u64>,
    /// Whether the targets accept `tools` (Dify's `tool-call` model feature).
    #[serde(default)]
    tool_calls: Option<bool>,
    /// The price of every target that sets none of its own.
    #[serde(default)]
    pricing: Option<RawPricing>,
    /// Which kinds of file the targets read (Dify's model features).
    #[serde(default)]
    features: Option<Vec<String>>,
    /// The targets' context window in tokens (Dify's `context_size`).
    #[serde(default)]
    context_size: Option<u64>,
}

/// Dify's model `pricing`: `input` and `output` per `unit` tokens (`unit: 0.000001` is a price
/// per million tokens).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    input: RawDecimal,
    #[serde(default)]
    output: Option<RawDecimal>,
    unit: RawDecimal,
    #[serde(default)]
    currency: Option<String>,
}

/// A price written as a YAML number or, to keep every digit, a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDecimal {
    Text(String),
    Number(f64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    provider: String,
    model: String,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    metrics_url: Option<String>,
    /// Azure OpenAI: the deployment name and API version.
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    pricing: Option<RawPricing>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default)]
    first_token_ms: Option<u64>,
    #[serde(default)]
    total_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    provider: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(rename = "use")]
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGatewayKey {
    name: String,
    key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    WeightedRoundRobin,
    LeastInFlight,
    Latency,
    PrefixAffinity,
    EngineMetrics,
}

impl Routing {
    const NAMES: &'static str = "weighted_round_robin, least_in_flight, latency, prefix_affinity, engine_metrics";

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "weighted_round_robin" | "round_robin" => Self::WeightedRoundRobin,
            "least_in_flight" => Self::LeastInFlight,
            "latency" => Self::Latency,
            "prefix_affinity" => Self::PrefixAffinity,
            "engine_metrics" | "vllm_metrics" => Self::EngineMetrics,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI and every server speaking its API.
    OpenAiCompatible,
    /// Azure OpenAI: `deployment` and `api_version` in the URL, the key in `api-key`.
    Azure {
        deployment: String,
        api_version: String,
    },
    Anthropic,
    /// Google's Gemini API (`generateContent`), key in `x-goog-api-key`.
    Gemini,
}

/// One upstream: a provider endpoint and model, with one or more keys that rotate.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// `provider/model@host`, for errors and metrics.
    pub label: String,
    pub provider: Provider,
    pub model: String,
    pub base_url: String,
    pub api_keys: Vec<String>,
    pub weight: u32,
    pub metrics_url: Option<String>,
    /// What this target's tokens cost; without it prices are zero, as in Dify.
    pub pricing: Option<Pricing>,
}

/// What a target's tokens cost, as Dify's `PriceConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    pub input: Decimal,
    /// No output price: completion tokens cost nothing (and report a zero unit price).
    pub output: Option<Decimal>,
    /// How many tokens a price is for, as a fraction: `0.000001` for per million.
    pub unit: Decimal,
    pub currency: String,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub routing: Routing,
    pub targets: Vec<TargetConfig>,
    pub fallbacks: Vec<String>,
    pub first_token_timeout: Duration,
    pub total_timeout: Duration,
    /// Tries across targets (and fallback models) for one request, the first included.
    pub max_attempts: u32,
    pub cache_ttl: Option<Duration>,
    pub default_max_tokens: u64,
    /// The targets accept `tools`: the parameter extractor's function-call mode asks through
    /// a tool call (else it uses Dify's JSON prompt). On unless the models file says
    /// `tool_calls: false` (a vLLM started without a tool parser, say).
    pub tool_calls: bool,
    /// The kinds of file the targets read; files of other kinds are left out of prompts, as
    /// Dify leaves out what a model's features do not list.
    pub features: Features,
    /// The context window in tokens: conversation memory is trimmed to fit it, oldest messages
    /// first, as Dify trims to a model's `context_size`. Unknown (no trimming) when unset.
    pub context_size: Option<u64>,
}

/// Dify's multimodal model features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub vision: bool,
    pub document: bool,
    pub audio: bool,
    pub video: bool,
}

impl Default for Features {
    /// Everything: a model that cannot read a kind says so in its error, rather than the file
    /// vanishing from the prompt unnoticed.
    fn default() -> Self {
        Self { vision: true, document: true, audio: true, video: true }
    }
}

impl Features {
    const NAMES: &'static str = "vision, document, audio, video";

    fn parse(names: &[String]) -> Result<Self, String> {
        let mut features = Self { vision: false, document: false, audio: false, video: false };
        for name in names {
            match name.as_str() {
                "vision" => features.vision = true,
                "document" => features.document = true,
                "audio" => features.audio = true,
                "video" => features.video = true,
                other => return Err(format!("unknown feature `{other}` (expected {})", Self::NAMES)),
            }
        }
        Ok(features)
    }

    /// Whether files of this Dify kind (`image`, `document`, …) reach the model.
    pub fn reads(&self, kind: &str) -> bool {
        match kind {
            "image" => self.vision,
            "document" => self.document,
            "audio" => self.audio,
            "video" => self.video,
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    pub models: Vec<ModelConfig>,
    /// (DSL provider, DSL model or `None` for any) → logical model.
    pub dify: Vec<(String, Option<String>, String)>,
    pub default: Option<String>,
    /// (name, key).
    pub gateway_keys: Vec<(String, String)>,
    pub limits: LimitsConfig,
    /// Where the answers of models with `cache` are kept.
    pub cache: CacheBackend,
}

impl GatewayConfig {
    /// Reads a models file; `${VAR}` is replaced from `env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw: RawFile = serde_saphyr::from_str(text).map_err(|error| {
            let line = error.location().map(|location| location.line());
            let message = error.to_string();
            let message = message.lines().next().unwrap_or_default().to_owned();
            ConfigError { problems: vec![ConfigProblem { line, message }] }
        })?;
        let mut problems = Vec::new();
        let mut config = GatewayConfig::default();
        let names: HashSet<&str> = raw.models.iter().map(|model| model.value.name.as_str()).collect();
        let mut seen = HashSet::new();
        for model in &raw.models {
            let line = Some(model.referenced.line());
            let mut problem = |message: String| problems.push(ConfigProblem { line, message });
            let raw_model = &model.value;
            if !seen.insert(raw_model.name.as_str()) {
                problem(format!("model `{}` is defined twice", raw_model.name));
            }
            let routing = match raw_model.routing.as_deref() {
                None => Routing::WeightedRoundRobin,
                Some(name) => Routing::parse(name).unwrap_or_else(|| {
                    problem(format!("model `{}`: unknown routing `{name}` (expected one of {})", raw_model.name, Routing::NAMES));
                    Routing::WeightedRoundRobin
                }),
            };
            if raw_model.targets.is_empty() {
                problem(format!("model `{}` has no targets", raw_model.name));
            }
            for fallback in &raw_model.fallbacks {
                if !names.contains(fallback.as_str()) {
                    problem(format!("model `{}`: fallback `{fallback}` is not a model in this file", raw_model.name));
                } else if fallback == &raw_model.name {
                    problem(format!("model `{}` falls back to itself", raw_model.name));
                }
            }
            let mut targets = Vec::new();
            let model_pricing = match raw_model.pricing.as_ref().map(pricing).transpose() {
                Ok(parsed) => parsed,
                Err(message) => {
                    problems.push(ConfigProblem { line, message: format!("model `{}`: {message}", raw_model.name) });
                    None
                }
            };
            for target in &raw_model.targets {
                match target_config(&target.value, env, model_pricing.as_ref()) {
                    Ok(parsed) => targets.push(parsed),
                    Err(message) => problems.push(ConfigProblem {
                        line: Some(target.referenced.line()),
                        message: format!("model `{}`: {message}", raw_model.name),
                    }),
                }
            }
            if routing == Routing::EngineMetrics && targets.iter().any(|target| target.metrics_url.is_none()) {
                problems.push(ConfigProblem {
                    line,
                    message: format!("model `{}`: engine_metrics routing needs a metrics_url on every target", raw_model.name),
                });
            }
            let features = match raw_model.features.as_deref().map(Features::parse).transpose() {
                Ok(features) => features.unwrap_or_default(),
                Err(message) => {
                    problems.push(ConfigProblem { line, message: format!("model `{}`: {message}", raw_model.name) });
                    Features::default()
                }
            };
            let timeouts = raw_model.timeouts.as_ref();
            config.models.push(ModelConfig {
                name: raw_model.name.clone(),
                routing,
                targets,
                fallbacks: raw_model.fallbacks.clone(),
                first_token_timeout: Duration::from_millis(timeouts.and_then(|t| t.first_token_ms).unwrap_or(30_000)),
                total_timeout: Duration::from_millis(timeouts.and_then(|t| t.total_ms).unwrap_or(600_000)),
                max_attempts: raw_model.max_attempts.unwrap_or(3).clamp(1, 16),
                cache_ttl: raw_model.cache.as_ref().map(|cache| Duration::from_secs(cache.ttl_seconds)),
                default_max_tokens: raw_model.default_max_tokens.unwrap_or(4096),
                tool_calls: raw_model.tool_calls.unwrap_or(true),
                features,
                context_size: raw_model.context_size,
            });
        }
        for mapping in &raw.dify {
            let raw_mapping = &mapping.value;
            if !names.contains(raw_mapping.target.as_str()) {
                problems.push(ConfigProblem {
                    line: Some(mapping.referenced.line()),
                    message: format!("dify mapping for `{}`: `{}` is not a model in this file", raw_mapping.provider, raw_mapping.target),
                });
            }
            config.dify.push((raw_mapping.provider.clone(), raw_mapping.model.clone(), raw_mapping.target.clone()));
        }
        if let Some(default) = &raw.default {
            if !names.contains(default.value.as_str()) {
                problems.push(ConfigProblem {
                    line: Some(default.referenced.line()),
                    message: format!("default `{}` is not a model in this file", default.value),
                });
            }
            config.default = Some(default.value.clone());
        }
        for key in &raw.gateway_keys {
            match expand(&key.value.key, env) {
                Ok(secret) if secret.len() >= 16 => config.gateway_keys.push((key.value.name.clone(), secret)),
                Ok(_) => problems.push(ConfigProblem {
                    line: Some(key.referenced.line()),
                    message: format!("gateway key `{}` is shorter than 16 characters", key.value.name),
                }),
                Err(message) => problems.push(ConfigProblem {
                    line: Some(key.referenced.line()),
                    message: format!("gateway key `{}`: {message}", key.value.name),
                }),
            }
        }
        if let Some(limits) = &raw.limits {
            config.limits = limits_config(&limits.value, limits.referenced.line(), env, &names, &mut problems);
        }
        if let Some(cache) = &raw.cache {
            let line = Some(cache.referenced.line());
            config.cache = match (cache.value.backend.as_str(), cache.value.redis_url.as_deref().map(|url| expand(url, env))) {
                ("memory", _) => CacheBackend::Memory,
                ("redis", Some(Ok(url))) if url.starts_with("redis://") => CacheBackend::Redis { url },
                ("redis", Some(Err(message))) => {
                    problems.push(ConfigProblem { line, message: format!("cache: redis_url: {message}") });
                    CacheBackend::Memory
                }
                ("redis", _) => {
                    problems.push(ConfigProblem { line, message: "cache: the redis backend needs a redis_url (redis://…)".into() });
                    CacheBackend::Memory
                }
                (other, _) => {
                    problems.push(ConfigProblem { line, message: format!("cache: unknown backend `{other}` (expected memory or redis)") });
                    CacheBackend::Memory
                }
            };
        }
        if problems.is_empty() { Ok(config) } else { Err(ConfigError { problems }) }
    }

    /// The logical model a DSL's provider and model name resolve to: an exact mapping, then
    /// the provider's catch-all, then a logical model with the DSL's model name, then the
    /// default.
    pub fn resolve(&self, provider: &str, model: &str) -> Option<&str> {
        let provider = short_provider(provider);
        let matches = |wanted: &str| short_provider(wanted) == provider;
        self.dify
            .iter()
            .find(|(wanted, name, _)| matches(wanted) && name.as_deref() == Some(model))
            .or_else(|| self.dify.iter().find(|(wanted, name, _)| matches(wanted) && name.is_none()))
            .map(|(_, _, target)| target.as_str())
            .or_else(|| self.models.iter().find(|candidate| candidate.name == model).map(|found| found.name.as_str()))
            .or(self.default.as_deref())
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|model| model.name == name)
    }
}

fn limits_config(
    raw: &RawLimits,
    line: u64,
    env: &dyn Fn(&str) -> Option<String>,
    models: &HashSet<&str>,
    problems: &mut Vec<ConfigProblem>,
) -> LimitsConfig {
    let mut problem = |line: u64, message: String| problems.push(ConfigProblem { line: Some(line), message });
    let backend = match raw.backend.as_deref().unwrap_or("memory") {
        "memory" => Backend::Memory,
        "redis" => {
            let url = match raw.redis_url.as_deref().map(|url| expand(url, env)) {
                Some(Ok(url)) if url.starts_with("redis://") => url,
                Some(Ok(_)) => {
                    problem(line, "limits: redis_url must start with redis://".into());
                    String::new()
                }
                Some(Err(message)) => {
                    problem(line, format!("limits: redis_url: {message}"));
                    String::new()
                }
                None => {
                    problem(line, "limits: the redis backend needs a redis_url".into());
                    String::new()
                }
            };
            let on_error = match raw.on_redis_error.as_deref() {
                Some("allow") => OnRedisError::Allow,
                Some("deny") => OnRedisError::Deny,
                Some(other) => {
                    problem(line, format!("limits: on_redis_error must be allow or deny (got `{other}`)"));
                    OnRedisError::Deny
                }
                None => {
                    problem(line, "limits: the redis backend needs on_redis_error: allow (calls pass unchecked while Redis is down) or deny (they are refused)".into());
                    OnRedisError::Deny
                }
            };
            Backend::Redis { url, on_error }
        }
        other => {
            problem(line, format!("limits: unknown backend `{other}` (expected memory or redis)"));
            Backend::Memory
        }
    };
    let mut rules = Vec::new();
    for rule in &raw.rules {
        let raw_rule = &rule.value;
        let line = rule.referenced.line();
        let Some(by) = LimitBy::parse(&raw_rule.limit_by) else {
            problem(
                line,
                format!("limit `{}`: limit_by must be key, app, user, model or global (got `{}`)", raw_rule.name, raw_rule.limit_by),
            );
            continue;
        };
        for model in &raw_rule.models {
            if model != "*" && !models.contains(model.as_str()) {
                problem(line, format!("limit `{}`: `{model}` is not a model in this file", raw_rule.name));
            }
        }
        let quotas: Vec<Quota> = [
            (Resource::Requests, 1, raw_rule.requests_per_second),
            (Resource::Requests, 60, raw_rule.requests_per_minute),
            (Resource::Requests, 3600, raw_rule.requests_per_hour),
            (Resource::Requests, 86_400, raw_rule.requests_per_day),
            (Resource::Tokens, 1, raw_rule.tokens_per_second),
            (Resource::Tokens, 60, raw_rule.tokens_per_minute),
            (Resource::Tokens, 3600, raw_rule.tokens_per_hour),
            (Resource::Tokens, 86_400, raw_rule.tokens_per_day),
        ]
        .into_iter()
        .filter_map(|(resource, seconds, limit)| limit.map(|limit| Quota { resource, window: Duration::from_secs(seconds), limit }))
        .collect();
        if quotas.is_empty() {
            problem(line, format!("limit `{}` sets no quota (requests_per_minute, tokens_per_hour, …)", raw_rule.name));
        }
        rules.push(Rule {
            name: raw_rule.name.clone(),
            by,
            matching: if raw_rule.matching.is_empty() { vec!["*".into()] } else { raw_rule.matching.clone() },
            models: if raw_rule.models.is_empty() { vec!["*".into()] } else { raw_rule.models.clone() },
            quotas,
        });
    }
    LimitsConfig { backend, rules }
}

/// `langgenius/openai/openai` and `openai` name the same provider: plugin ids end in the
/// provider's name.
fn short_provider(provider: &str) -> &str {
    provider.rsplit('/').next().unwrap_or(provider)
}

fn pricing(raw: &RawPricing) -> Result<Pricing, String> {
    let decimal = |field: &str, value: &RawDecimal| {
        let parsed = match value {
            RawDecimal::Text(text) => Decimal::parse(text),
            RawDecimal::Number(number) => Decimal::parse(&number.to_string()),
        };
        match parsed {
            Ok(price) if price.is_negative() => Err(format!("pricing.{field} must not be negative")),
            Ok(price) => Ok(price),
            Err(error) => Err(format!("pricing.{field}: {error}")),
        }
    };
    Ok(Pricing {
        input: decimal("input", &raw.input)?,
        output: raw.output.as_ref().map(|output| decimal("output", output)).transpose()?,
        unit: decimal("unit", &raw.unit)?,
        currency: raw.currency.clone().unwrap_or_else(|| "USD".into()),
    })
}

fn target_config(raw: &RawTarget, env: &dyn Fn(&str) -> Option<String>, model_pricing: Option<&Pricing>) -> Result<TargetConfig, String> {
    let pricing = match &raw.pricing {
        Some(own) => Some(pricing(own).map_err(|message| format!("target `{}`: {message}", raw.model))?),
        None => model_pricing.cloned(),
    };
    let base_url = raw.base_url.as_deref().map(|url| expand(url, env)).transpose()?;
    let api_keys = raw.api_keys.iter().map(|key| expand(key, env)).collect::<Result<Vec<_>, _>>()?;
    let (provider, base_url) = match raw.provider.as_str() {
        "openai" => (Provider::OpenAiCompatible, base_url.unwrap_or_else(|| "https://api.openai.com/v1".into())),
        "openai_compatible" | "vllm" | "sglang" | "ollama" | "lm_studio" | "deepseek" | "siliconflow" | "openrouter" => {
            let default = match raw.provider.as_str() {
                "deepseek" => Some("https://api.deepseek.com/v1"),
                "siliconflow" => Some("https://api.siliconflow.cn/v1"),
                "openrouter" => Some("https://openrouter.ai/api/v1"),
                "ollama" => Some("http://127.0.0.1:11434/v1"),
                _ => None,
            };
            let url = base_url
                .or_else(|| default.map(str::to_owned))
                .ok_or_else(|| format!("target `{}`: provider {} needs a base_url", raw.model, raw.provider))?;
            (Provider::OpenAiCompatible, url)
        }
        "gemini" => (Provider::Gemini, base_url.unwrap_or_else(|| "https://generativelanguage.googleapis.com/v1beta".into())),
        // Gemini through Google's OpenAI-compatible endpoint.
        "gemini_openai" => {
            (Provider::OpenAiCompatible, base_url.unwrap_or_else(|| "https://generativelanguage.googleapis.com/v1beta/openai".into()))
        }
        "azure" => {
            let url =
                base_url.ok_or_else(|| format!("target `{}`: azure needs a base_url (https://RESOURCE.openai.azure.com)", raw.model))?;
            let deployment = raw.deployment.clone().unwrap_or_else(|| raw.model.clone());
            let api_version = raw.api_version.clone().unwrap_or_else(|| "2024-10-21".into());
            (Provider::Azure { deployment, api_version }, url)
        }
        "anthropic" => (Provider::Anthropic, base_url.unwrap_or_else(|| "https://api.anthropic.com".into())),
        other => {
            return Err(format!(
                "target `{}`: unknown provider `{other}` (expected openai, openai_compatible, vllm, sglang, ollama, lm_studio, deepseek, siliconflow, openrouter, gemini, gemini_openai, azure, anthropic)",
                raw.model
            ));
        }
    };
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(format!("target `{}`: base_url must start with http:// or https://", raw.model));
    }
    if provider == Provider::Gemini && base_url.trim_end_matches('/').ends_with("/openai") {
        return Err(format!(
            "target `{}`: provider gemini speaks Gemini's own API; for Google's OpenAI-compatible endpoint use provider gemini_openai",
            raw.model
        ));
    }
    if matches!(provider, Provider::Anthropic | Provider::Azure { .. } | Provider::Gemini) && api_keys.is_empty() {
        return Err(format!("target `{}`: provider {} needs api_keys", raw.model, raw.provider));
    }
    let host = base_url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or_default().to_owned();
    Ok(TargetConfig {
        label: format!("{}/{}@{host}", raw.provider, raw.model),
        provider,
        model: raw.model.clone(),
        base_url,
        api_keys,
        weight: raw.weight.unwrap_or(1).max(1),
        metrics_url: raw.metrics_url.as_deref().map(|url| expand(url, env)).transpose()?,
        pricing,
    })
}

/// Replaces `${VAR}` with the variable's value; a missing variable is an error naming it.
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| "an unterminated `${` in a value".to_owned())?;
        let name = &after[..end];
        out.push_str(&env(name).ok_or_else(|| format!("environment variable {name} is not set"))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "OPENAI_KEY" => Some("sk-live-secret-value".into()),
            "GATEWAY_KEY" => Some("fg-0123456789abcdef".into()),
            _ => None,
        }
    }

    const GOOD: &str = "\
models:
  - name: main
    routing: least_in_flight
    targets:
      - {provider: openai, model: gpt-4o-mini, api_keys: ['${OPENAI_KEY}']}
      - {provider: vllm, model: qwen, base_url: 'http://10.0.0.5:8000/v1', weight: 3}
    fallbacks: [backup]
  - name: backup
    targets:
      - {provider: anthropic, model: claude-haiku, api_keys: ['${OPENAI_KEY}']}
dify:
  - {provider: langgenius/openai/openai, model: gpt-4o, use: main}
  - {provider: anthropic, use: backup}
default: main
gateway_keys:
  - {name: backend, key: '${GATEWAY_KEY}'}
";

    #[test]
    fn a_good_file_reads_with_secrets_from_the_environment() {
        let config = GatewayConfig::parse(GOOD, &env).unwrap();
        let main = config.model("main").unwrap();
        assert_eq!(main.routing, Routing::LeastInFlight);
        assert_eq!(main.targets[0].api_keys, vec!["sk-live-secret-value".to_owned()]);
        assert_eq!(main.targets[0].base_url, "https://api.openai.com/v1");
        assert_eq!(main.targets[1].weight, 3);
        assert_eq!(main.targets[1].label, "vllm/qwen@10.0.0.5:8000");
        assert_eq!(config.gateway_keys, vec![("backend".to_owned(), "fg-0123456789abcdef".to_owned())]);
        // Dify names: exact, provider catch-all, plugin ids, then the default.
        assert_eq!(config.resolve("openai", "gpt-4o"), Some("main"));
        assert_eq!(config.resolve("langgenius/anthropic/anthropic", "claude-3-5-sonnet"), Some("backup"));
        assert_eq!(config.resolve("siliconflow", "deepseek-v3"), Some("main"));
        assert_eq!(config.resolve("x", "backup"), Some("backup"), "a logical model's own name");
    }

    #[test]
    fn pricing_is_read_exactly_and_targets_inherit_their_models() {
        let text = "\
models:
  - name: main
    pricing: {input: '0.15', output: 0.6, unit: 0.000001}
    targets:
      - {provider: vllm, model: a, base_url: 'http://a:8000/v1'}
      - {provider: vllm, model: b, base_url: 'http://b:8000/v1', pricing: {input: 2, unit: '0.001', currency: RMB}}
";
        let config = GatewayConfig::parse(text, &env).unwrap();
        let targets = &config.model("main").unwrap().targets;
        let inherited = targets[0].pricing.as_ref().unwrap();
        assert_eq!(
            (inherited.input.to_string(), inherited.output.map(|output| output.to_string()), inherited.unit.to_string()),
            ("0.15".into(), Some("0.6".into()), "0.000001".into())
        );
        assert_eq!(inherited.currency, "USD");
        let own = targets[1].pricing.as_ref().unwrap();
        assert_eq!((own.input.to_string(), own.output, own.currency.as_str()), ("2".into(), None, "RMB"));

        let bad = "\
models:
  - name: main
    targets:
      - {provider: vllm, model: a, base_url: 'http://a:8000/v1', pricing: {input: 'two', unit: 0.000001}}
  - name: other
    pricing: {input: -1, unit: 0.000001}
    targets:
      - {provider: vllm, model: b, base_url: 'http://b:8000/v1'}
";
        let error = GatewayConfig::parse(bad, &env).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("line 4: model `main`: target `a`: pricing.input: `two` is not a decimal number"), "{text}");
        assert!(text.contains("line 5: model `other`: pricing.input must not be negative"), "{text}");
    }

    #[test]
    fn errors_name_the_line_and_never_the_secret() {
        let bad = "\
models:
  - name: main
    routing: fastest
    targets:
      - {provider: opnai, model: gpt-4o}
      - {provider: openai, model: gpt-4o, api_keys: ['${MISSING_KEY}']}
    fallbacks: [nowhere]
default: other
";
        let error = GatewayConfig::parse(bad, &env).unwrap_err();
        let text = error.to_string();
        let lines: Vec<Option<u64>> = error.problems.iter().map(|problem| problem.line).collect();
        assert!(text.contains("unknown routing `fastest`"), "{text}");
        assert!(text.contains("unknown provider `opnai`"), "{text}");
        assert!(text.contains("environment variable MISSING_KEY is not set"), "{text}");
        assert!(text.contains("fallback `nowhere`"), "{text}");
        assert!(text.contains("default `other`"), "{text}");
        assert!(lines.contains(&Some(5)) && lines.contains(&Some(6)) && lines.contains(&Some(8)), "{lines:?}");

        let openai_path = "models:\n  - name: g\n    targets:\n      - {provider: gemini, model: gemini-2.5-flash, base_url: 'https://generativelanguage.googleapis.com/v1beta/openai/', api_keys: ['${OPENAI_KEY}']}\n";
        let error = GatewayConfig::parse(openai_path, &env).unwrap_err();
        assert_eq!(error.problems[0].line, Some(4), "{error}");
        assert!(error.to_string().contains("use provider gemini_openai"), "{error}");

        let unknown_field = GatewayConfig::parse("models:\n  - name: a\n    tragets: []\n", &env).unwrap_err();
        assert_eq!(unknown_field.problems[0].line, Some(3), "{unknown_field}");
        assert!(unknown_field.to_string().contains("tragets"), "{unknown_field}");

        let short_key = GatewayConfig::parse("gateway_keys:\n  - {name: k, key: '${KEY}'}\n", &|_| Some("tiny-secret".into())).unwrap_err();
        assert!(short_key.to_string().contains("shorter than 16"), "{short_key}");
        assert!(!short_key.to_string().contains("tiny-secret"), "{short_key}");
    }
}
