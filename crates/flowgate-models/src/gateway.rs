//! Routing a call to a target: per logical model a strategy picks among the targets that are
//! not cooling down; a retryable failure cools the key or target down and the next attempt
//! goes to another target, then to the fallback models, within a per-request attempt limit and
//! a retry budget shared by all requests (so an outage does not multiply the load it gets).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowgate_engine::decimal::Decimal;
use flowgate_engine::ports::Usage;
use tokio::time::Instant;

use crate::anthropic::AnthropicTarget;
use crate::cache::{self, AnswerCache};
use crate::config::{GatewayConfig, ModelConfig, Pricing, Provider, Routing, TargetConfig};
use crate::error::{ErrorClass, ProviderError};
use crate::gemini::GeminiTarget;
use crate::limits::{Caller, Limiter, Refusal, Reservation};
use crate::metrics::{GatewayMetrics, Payer};
use crate::openai::{OpenAiTarget, Timeouts};
use crate::stream::ChatStream;
use crate::types::{ChatRequest, ChatResponse, TokenUsage};

/// The longest a 429 cools a key down, whatever `Retry-After` says.
const MAX_COOLDOWN: Duration = Duration::from_secs(60);
/// How long a 429 without `Retry-After` cools a key down.
const DEFAULT_RATE_COOLDOWN: Duration = Duration::from_secs(1);
/// How long an overloaded or unreachable target is left alone.
const FAILURE_COOLDOWN: Duration = Duration::from_secs(1);
/// A rejected key (401/403) is probably wrong until someone fixes it.
const AUTH_COOLDOWN: Duration = Duration::from_secs(60);
/// How long a prompt prefix stays tied to the target that served it.
const AFFINITY_TTL: Duration = Duration::from_secs(300);
const AFFINITY_CAPACITY: usize = 100_000;

/// Why a call could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    #[error("no target of `{model}` is available (all cooling down after errors)")]
    NoTarget { model: String, retry_after: Duration },
    /// The last failure, after every attempt the limits allowed.
    #[error("{last} (after {attempts} attempts)")]
    Failed { last: ProviderError, attempts: u32 },
    /// A configured request or token limit refused the call.
    #[error("{0}")]
    Limited(Refusal),
}

impl GatewayError {
    pub fn class(&self) -> Option<&ErrorClass> {
        match self {
            Self::Failed { last, .. } => Some(&last.class),
            _ => None,
        }
    }
}

enum Adapter {
    OpenAi(OpenAiTarget),
    Anthropic(AnthropicTarget),
    Gemini(GeminiTarget),
}

struct KeySlot {
    adapter: Adapter,
    cooldown_until: Mutex<Option<Instant>>,
}

/// A target with its live state.
pub(crate) struct Target {
    pub(crate) config: TargetConfig,
    keys: Vec<KeySlot>,
    next_key: AtomicUsize,
    in_flight: AtomicUsize,
    /// Time to answer (or first token), exponentially weighted, in microseconds (f64 bits).
    ewma_micros: AtomicU64,
    cooldown_until: Mutex<Option<Instant>>,
    /// From the target's `/metrics`: (requests waiting, KV-cache use 0–1).
    pub(crate) engine_load: Mutex<(f64, f64)>,
}

fn cooling(until: &Mutex<Option<Instant>>, now: Instant) -> Option<Instant> {
    until.lock().ok().and_then(|until| *until).filter(|until| *until > now)
}

fn cool(until: &Mutex<Option<Instant>>, duration: Duration) {
    if let Ok(mut until) = until.lock() {
        let end = Instant::now() + duration.min(MAX_COOLDOWN);
        *until = Some(until.map_or(end, |current| current.max(end)));
    }
}

impl Target {
    fn new(config: TargetConfig, client: &reqwest::Client) -> Self {
        let adapter = |key: Option<String>| match &config.provider {
            Provider::OpenAiCompatible => Adapter::OpenAi(OpenAiTarget::new(&config.label, &config.base_url, key, client.clone())),
            Provider::Azure { deployment, api_version } => Adapter::OpenAi(OpenAiTarget::azure(
                &config.label,
                &config.base_url,
                deployment,
                api_version,
                key.unwrap_or_default(),
                client.clone(),
            )),
            Provider::Anthropic => {
                Adapter::Anthropic(AnthropicTarget::new(&config.label, &config.base_url, key.unwrap_or_default(), client.clone()))
            }
            Provider::Gemini => {
                Adapter::Gemini(GeminiTarget::new(&config.label, &config.base_url, key.unwrap_or_default(), client.clone()))
            }
        };
        let keys: Vec<KeySlot> = if config.api_keys.is_empty() {
            vec![KeySlot { adapter: adapter(None), cooldown_until: Mutex::new(None) }]
        } else {
            config.api_keys.iter().map(|key| KeySlot { adapter: adapter(Some(key.clone())), cooldown_until: Mutex::new(None) }).collect()
        };
        Self {
            config,
            keys,
            next_key: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            ewma_micros: AtomicU64::new(0f64.to_bits()),
            cooldown_until: Mutex::new(None),
            engine_load: Mutex::new((0.0, 0.0)),
        }
    }

    /// When the target can be used again, if it cannot now (it, or every one of its keys, is
    /// cooling down).
    fn unavailable_until(&self, now: Instant) -> Option<Instant> {
        if let Some(until) = cooling(&self.cooldown_until, now) {
            return Some(until);
        }
        let mut earliest: Option<Instant> = None;
        for key in &self.keys {
            match cooling(&key.cooldown_until, now) {
                None => return None,
                Some(until) => earliest = Some(earliest.map_or(until, |earliest| earliest.min(until))),
            }
        }
        earliest
    }

    /// The next key that is not cooling down, round robin.
    fn key(&self, now: Instant) -> Option<&KeySlot> {
        let start = self.next_key.fetch_add(1, Ordering::Relaxed);
        (0..self.keys.len())
            .map(|offset| &self.keys[(start + offset) % self.keys.len()])
            .find(|key| cooling(&key.cooldown_until, now).is_none())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn ewma(&self) -> f64 {
        f64::from_bits(self.ewma_micros.load(Ordering::Relaxed))
    }

    fn observe(&self, elapsed: Duration) {
        let sample = elapsed.as_secs_f64() * 1e6;
        let previous = self.ewma();
        let next = if previous == 0.0 { sample } else { previous * 0.8 + sample * 0.2 };
        self.ewma_micros.store(next.to_bits(), Ordering::Relaxed);
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Counts a call as in flight on its target until dropped (for streams: until the stream is).
pub(crate) struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retries allowed across all requests of a model: each request earns a fifth of a retry, and
/// ten a second are always allowed; a retry spends one. When every target fails, the retries
/// stop at about 20% extra load instead of tripling it.
struct RetryBudget {
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    const RATIO: f64 = 0.2;
    const PER_SECOND: f64 = 10.0;
    const CAP: f64 = 100.0;

    fn new() -> Self {
        Self { state: Mutex::new((Self::PER_SECOND, Instant::now())) }
    }

    fn deposit(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = (state.0 + Self::RATIO).min(Self::CAP);
        }
    }

    fn withdraw(&self) -> bool {
        let Ok(mut state) = self.state.lock() else { return false };
        let now = Instant::now();
        let refill = now.duration_since(state.1).as_secs_f64() * Self::PER_SECOND;
        state.0 = (state.0 + refill).min(Self::CAP);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

struct LogicalModel {
    config: ModelConfig,
    targets: Vec<Arc<Target>>,
    /// Smooth weighted round robin's running weights.
    round_robin: Mutex<Vec<i64>>,
    affinity: Mutex<HashMap<u64, (usize, Instant)>>,
    budget: RetryBudget,
}

/// A small, fast, non-cryptographic random number (xorshift) per thread, for power-of-two
/// choices and jitter.
fn random(below: usize) -> usize {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::thread::current().id().hash(&mut hasher);
            std::time::SystemTime::now().hash(&mut hasher);
            hasher.finish() | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x % below.max(1) as u64) as usize
    })
}

/// Hashes of the request's message prefixes (after the first message, the first two, …), so
/// requests that share a conversation or system prompt share the longest ones.
fn prefix_hashes(request: &ChatRequest) -> Vec<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request
        .messages
        .iter()
        .map(|message| {
            message.role.hash(&mut hasher);
            message.content.as_text().hash(&mut hasher);
            hasher.finish()
        })
        .collect()
}

impl LogicalModel {
    /// Picks a target among those not in `tried` and available now.
    fn pick(&self, request: &ChatRequest, tried: &HashSet<usize>, now: Instant) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.targets.len())
            .filter(|index| !tried.contains(index) && self.targets[*index].unavailable_until(now).is_none())
            .collect();
        match candidates.len() {
            0 => return None,
            1 => return Some(candidates[0]),
            _ => {}
        }
        let load = |index: usize| {
            let target = &self.targets[index];
            target.in_flight() as f64 / f64::from(target.config.weight)
        };
        let two_choices = |cost: &dyn Fn(usize) -> f64| {
            let first = candidates[random(candidates.len())];
            let mut second = candidates[random(candidates.len() - 1)];
            if second == first {
                second = candidates[candidates.len() - 1];
            }
            if cost(second) < cost(first) { second } else { first }
        };
        Some(match self.config.routing {
            Routing::WeightedRoundRobin => self.round_robin(&candidates),
            Routing::LeastInFlight => two_choices(&load),
            Routing::Latency => {
                // A target not measured yet counts as the slowest measured one (or 50 ms), so
                // a slow target is not preferred just because its first answer has not come.
                let slowest = candidates.iter().map(|index| self.targets[*index].ewma()).fold(0.0, f64::max);
                let unmeasured = if slowest > 0.0 { slowest } else { 50_000.0 };
                two_choices(&|index| {
                    let target = &self.targets[index];
                    let ewma = if target.ewma() > 0.0 { target.ewma() } else { unmeasured };
                    ewma * (target.in_flight() as f64 + 1.0) / f64::from(target.config.weight)
                })
            }
            Routing::PrefixAffinity => self.by_prefix(request, &candidates, now, &load),
            Routing::EngineMetrics => {
                let cost = |index: usize| {
                    let target = &self.targets[index];
                    let (waiting, kv) = target.engine_load.lock().map(|load| *load).unwrap_or_default();
                    // Queued requests dominate; a nearly full KV cache will start evicting
                    // (and queueing) soon; our own in-flight calls cover the time between scrapes.
                    waiting * 4.0 + kv * 10.0 + target.in_flight() as f64 / f64::from(target.config.weight)
                };
                candidates.iter().copied().min_by(|a, b| cost(*a).total_cmp(&cost(*b))).unwrap_or(candidates[0])
            }
        })
    }

    fn round_robin(&self, candidates: &[usize]) -> usize {
        let Ok(mut current) = self.round_robin.lock() else { return candidates[0] };
        let total: i64 = candidates.iter().map(|index| i64::from(self.targets[*index].config.weight)).sum();
        let mut best = candidates[0];
        for index in candidates {
            current[*index] += i64::from(self.targets[*index].config.weight);
            if current[*index] > current[best] {
                best = *index;
            }
        }
        current[best] -= total;
        best
    }

    /// The target that served the longest shared prefix, unless it is much busier than the
    /// least busy candidate (then the least busy of two random ones, which takes the prefix).
    fn by_prefix(&self, request: &ChatRequest, candidates: &[usize], now: Instant, load: &dyn Fn(usize) -> f64) -> usize {
        let hashes = prefix_hashes(request);
        let least = candidates.iter().map(|index| load(*index)).fold(f64::INFINITY, f64::min);
        let Ok(mut table) = self.affinity.lock() else { return candidates[0] };
        let remembered = hashes.iter().rev().find_map(|hash| {
            table.get(hash).filter(|(index, expires)| *expires > now && candidates.contains(index)).map(|(index, _)| *index)
        });
        let chosen = match remembered {
            // Blended with load: the cache hit is worth a little queueing, not a flood.
            Some(index) if load(index) <= least * 1.5 + 2.0 => index,
            _ => {
                let first = candidates[random(candidates.len())];
                let second = candidates[random(candidates.len())];
                if load(second) < load(first) { second } else { first }
            }
        };
        if table.len() >= AFFINITY_CAPACITY {
            table.retain(|_, (_, expires)| *expires > now);
            if table.len() >= AFFINITY_CAPACITY {
                table.clear();
            }
        }
        for hash in hashes {
            table.insert(hash, (chosen, now + AFFINITY_TTL));
        }
        chosen
    }
}

/// What served a call.
pub struct Served<T> {
    pub value: T,
    /// The logical model that answered (a fallback's name when it did).
    pub model: String,
    /// The target's label.
    pub target: String,
    pub attempts: u32,
}

pub struct Gateway {
    config: GatewayConfig,
    models: HashMap<String, Arc<LogicalModel>>,
    limiter: Limiter,
    cache: AnswerCache,
    metrics: GatewayMetrics,
}

enum Mode {
    Complete,
    Stream,
    /// An OpenAI embeddings request body.
    Embeddings(serde_json::Value),
}

enum Answer {
    Complete(ChatResponse),
    Stream(ChatStream),
    Json(serde_json::Value),
}

impl Gateway {
    pub fn new(config: GatewayConfig, client: &reqwest::Client) -> Result<Self, String> {
        let models = config
            .models
            .iter()
            .map(|model| {
                let targets: Vec<Arc<Target>> = model.targets.iter().map(|target| Arc::new(Target::new(target.clone(), client))).collect();
                let logical = LogicalModel {
                    config: model.clone(),
                    round_robin: Mutex::new(vec![0; targets.len()]),
                    targets,
                    affinity: Mutex::new(HashMap::new()),
                    budget: RetryBudget::new(),
                };
                (model.name.clone(), Arc::new(logical))
            })
            .collect();
        let limiter = Limiter::new(&config.limits)?;
        let cache = AnswerCache::new(&config.cache)?;
        Ok(Self { config, models, limiter, cache, metrics: GatewayMetrics::default() })
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// The cached answer to this exact request, if its model caches and has one. A cached
    /// answer cost no upstream tokens: its usage is zero.
    pub async fn cached(&self, model: &str, request: &ChatRequest) -> Option<ChatResponse> {
        self.models.get(model)?.config.cache_ttl?;
        let mut answer = self.cache.get(&cache::key(model, request)).await?;
        self.metrics.request(model, "cache_hit");
        answer.usage = Some(crate::types::TokenUsage::default());
        Some(answer)
    }

    /// Keeps a complete answer for the model's cache TTL (if it caches).
    pub async fn remember(&self, model: &str, request: &ChatRequest, answer: &ChatResponse) {
        let Some(ttl) = self.models.get(model).and_then(|logical| logical.config.cache_ttl) else { return };
        if answer.finish_reason.is_some() {
            self.cache.put(&cache::key(model, request), answer, ttl).await;
        }
    }

    /// Applies the configured limits to a call before it is made: reserves one request and the
    /// call's token estimate (a token per four characters of prompt, plus its output cap or the
    /// model's default) in every quota that covers it. Settle the reservation with the usage.
    pub async fn admit(&self, model: &str, request: &ChatRequest, caller: &Caller) -> Result<Reservation, GatewayError> {
        if self.limiter.is_empty() {
            return Ok(Reservation::none());
        }
        let logical = self.models.get(model).ok_or_else(|| GatewayError::UnknownModel(model.to_owned()))?;
        let prompt: usize = request.messages.iter().map(|message| message.content.as_text().len()).sum();
        let estimate = prompt.div_ceil(4) as u64 + request.max_output_tokens().unwrap_or(logical.config.default_max_tokens);
        self.limiter.admit(model, caller, estimate).await.map_err(|refusal| self.refused(model, refusal))
    }

    fn refused(&self, model: &str, refusal: Refusal) -> GatewayError {
        self.metrics.request(model, "limited");
        self.metrics.limited(&refusal.rule);
        GatewayError::Limited(refusal)
    }

    /// The same for an embeddings call: its input is all it spends.
    pub async fn admit_embeddings(&self, model: &str, input_characters: usize, caller: &Caller) -> Result<Reservation, GatewayError> {
        if self.limiter.is_empty() {
            return Ok(Reservation::none());
        }
        if !self.models.contains_key(model) {
            return Err(GatewayError::UnknownModel(model.to_owned()));
        }
        self.limiter.admit(model, caller, input_characters.div_ceil(4) as u64).await.map_err(|refusal| self.refused(model, refusal))
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Records what a call used in the metrics (per gateway key or app too) and returns it as
    /// Dify reports it, priced with the serving target's `pricing` (zero without one).
    pub fn account(&self, model: &str, target: &str, used: &TokenUsage, payer: Payer<'_>) -> Usage {
        let pricing = self
            .models
            .get(model)
            .and_then(|logical| logical.targets.iter().find(|candidate| candidate.config.label == target))
            .and_then(|found| found.config.pricing.as_ref());
        let usage = priced(pricing, used);
        let cost = pricing.map(|pricing| (usage.total_price, pricing.currency.as_str()));
        self.metrics.usage(model, target, used.prompt_tokens, used.completion_tokens, cost, payer);
        usage
    }

    /// Every target with a metrics URL, for the scraper.
    pub(crate) fn scraped_targets(&self) -> Vec<Arc<Target>> {
        self.models.values().flat_map(|model| model.targets.iter().filter(|target| target.config.metrics_url.is_some()).cloned()).collect()
    }

    pub async fn chat(&self, model: &str, request: &ChatRequest) -> Result<Served<ChatResponse>, GatewayError> {
        let served = self.route(model, request, Mode::Complete).await?;
        match served.value {
            Answer::Complete(value) => Ok(Served { value, model: served.model, target: served.target, attempts: served.attempts }),
            Answer::Stream(stream) => {
                let value = stream.collect().await.map_err(|last| GatewayError::Failed { last, attempts: served.attempts })?;
                Ok(Served { value, model: served.model, target: served.target, attempts: served.attempts })
            }
            Answer::Json(_) => Err(GatewayError::UnknownModel(model.to_owned())),
        }
    }

    /// Embeddings (an OpenAI request body; its `model` is replaced by the target's).
    pub async fn embeddings(&self, model: &str, body: &serde_json::Value) -> Result<Served<serde_json::Value>, GatewayError> {
        let served = self.route(model, &ChatRequest::default(), Mode::Embeddings(body.clone())).await?;
        match served.value {
            Answer::Json(value) => Ok(Served { value, model: served.model, target: served.target, attempts: served.attempts }),
            _ => Err(GatewayError::UnknownModel(model.to_owned())),
        }
    }

    /// A stream that has delivered its first event: failures before that were retried.
    pub async fn chat_stream(&self, model: &str, request: &ChatRequest) -> Result<Served<ChatStream>, GatewayError> {
        let served = self.route(model, request, Mode::Stream).await?;
        match served.value {
            Answer::Stream(value) => Ok(Served { value, model: served.model, target: served.target, attempts: served.attempts }),
            _ => Err(GatewayError::UnknownModel(model.to_owned())),
        }
    }

    async fn route(&self, model: &str, request: &ChatRequest, mode: Mode) -> Result<Served<Answer>, GatewayError> {
        let result = self.route_attempts(model, request, mode).await;
        match &result {
            Ok(served) => {
                self.metrics.request(model, "ok");
                if served.model != model {
                    self.metrics.fallback(model, &served.model);
                }
            }
            Err(_) => self.metrics.request(model, "error"),
        }
        result
    }

    async fn route_attempts(&self, model: &str, request: &ChatRequest, mode: Mode) -> Result<Served<Answer>, GatewayError> {
        let primary = self.models.get(model).ok_or_else(|| GatewayError::UnknownModel(model.to_owned()))?;
        let mut chain = vec![primary.clone()];
        chain.extend(primary.config.fallbacks.iter().filter_map(|name| self.models.get(name).cloned()));
        let max_attempts = primary.config.max_attempts;
        let mut attempts = 0u32;
        let mut last: Option<ProviderError> = None;
        let mut soonest: Option<Instant> = None;
        'models: for logical in &chain {
            let mut tried = HashSet::new();
            loop {
                if attempts >= max_attempts {
                    break 'models;
                }
                let now = Instant::now();
                let Some(index) = logical.pick(request, &tried, now) else {
                    for target in &logical.targets {
                        if let Some(until) = target.unavailable_until(now) {
                            soonest = Some(soonest.map_or(until, |soonest| soonest.min(until)));
                        }
                    }
                    continue 'models;
                };
                tried.insert(index);
                let target = &logical.targets[index];
                let Some(key) = target.key(now) else { continue };
                if attempts > 0 {
                    if !primary.budget.withdraw() {
                        break 'models;
                    }
                    if let Some(previous) = &last
                        && !matches!(previous.class, ErrorClass::RateLimited { .. } | ErrorClass::Auth)
                    {
                        // Jittered backoff after a failure that may be load-related; a 429
                        // moves straight to another key or target instead of sleeping.
                        let cap = Duration::from_millis(25u64 << attempts.min(5)).min(Duration::from_millis(500));
                        tokio::time::sleep(cap.mul_f64(random(1000) as f64 / 1000.0)).await;
                    }
                } else {
                    primary.budget.deposit();
                }
                attempts += 1;
                let mut upstream = request.clone();
                upstream.model = target.config.model.clone();
                let timeouts = Timeouts { first_token: logical.config.first_token_timeout, total: logical.config.total_timeout };
                let in_flight = target.start();
                let started = Instant::now();
                let streaming = matches!(mode, Mode::Stream);
                let result = match (&key.adapter, &mode) {
                    (Adapter::OpenAi(adapter), Mode::Complete) => adapter.chat(&upstream, timeouts).await.map(Answer::Complete),
                    (Adapter::OpenAi(adapter), Mode::Stream) => adapter.chat_stream(&upstream, timeouts).await.map(Answer::Stream),
                    (Adapter::Anthropic(adapter), Mode::Complete) => adapter.chat(&upstream, timeouts).await.map(Answer::Complete),
                    (Adapter::Anthropic(adapter), Mode::Stream) => adapter.chat_stream(&upstream, timeouts).await.map(Answer::Stream),
                    (Adapter::Gemini(adapter), Mode::Complete) => adapter.chat(&upstream, timeouts).await.map(Answer::Complete),
                    (Adapter::Gemini(adapter), Mode::Stream) => adapter.chat_stream(&upstream, timeouts).await.map(Answer::Stream),
                    (Adapter::OpenAi(adapter), Mode::Embeddings(body)) => {
                        let mut body = body.clone();
                        body["model"] = serde_json::Value::String(target.config.model.clone());
                        adapter.embeddings(&body, timeouts).await.map(Answer::Json)
                    }
                    (Adapter::Gemini(adapter), Mode::Embeddings(body)) => {
                        let mut body = body.clone();
                        body["model"] = serde_json::Value::String(target.config.model.clone());
                        adapter.embeddings(&body, timeouts).await.map(Answer::Json)
                    }
                    (Adapter::Anthropic(_), Mode::Embeddings(_)) => Err(ProviderError::new(
                        ErrorClass::BadRequest,
                        &target.config.label,
                        "Anthropic has no embeddings API; configure an OpenAI-compatible target for this model",
                    )),
                };
                match result {
                    Ok(value) => {
                        target.observe(started.elapsed());
                        self.metrics.attempt(&logical.config.name, &target.config.label, "ok");
                        self.metrics.answered(&logical.config.name, &target.config.label, started.elapsed().as_secs_f64(), streaming);
                        let value = match value {
                            // A stream stays in flight on its target until it is dropped.
                            Answer::Stream(mut stream) => {
                                stream.hold(in_flight);
                                Answer::Stream(stream)
                            }
                            complete => complete,
                        };
                        return Ok(Served { value, model: logical.config.name.clone(), target: target.config.label.clone(), attempts });
                    }
                    Err(error) => {
                        self.metrics.attempt(&logical.config.name, &target.config.label, error.class.as_str());
                        match &error.class {
                            ErrorClass::RateLimited { retry_after } => {
                                cool(&key.cooldown_until, retry_after.unwrap_or(DEFAULT_RATE_COOLDOWN));
                            }
                            ErrorClass::Auth => cool(&key.cooldown_until, AUTH_COOLDOWN),
                            ErrorClass::Overloaded | ErrorClass::Connection | ErrorClass::Timeout => {
                                cool(&target.cooldown_until, FAILURE_COOLDOWN)
                            }
                            _ => {}
                        }
                        // Another key of the same target may still serve.
                        if matches!(error.class, ErrorClass::RateLimited { .. } | ErrorClass::Auth)
                            && target.unavailable_until(Instant::now()).is_none()
                        {
                            tried.remove(&index);
                        }
                        let class = error.class.clone();
                        last = Some(error);
                        match class {
                            // Another target of the same model has the same context window:
                            // only a fallback model can help.
                            ErrorClass::ContextTooLong => continue 'models,
                            class if class.is_retryable() => continue,
                            _ => break 'models,
                        }
                    }
                }
            }
        }
        match last {
            Some(last) => Err(GatewayError::Failed { last, attempts }),
            None => Err(GatewayError::NoTarget {
                model: model.to_owned(),
                retry_after: soonest.map_or(Duration::from_secs(1), |until| until.saturating_duration_since(Instant::now())),
            }),
        }
    }
}

/// Reads queue depth and KV-cache use from a Prometheus text page, under vLLM's or SGLang's
/// names (summed over label sets: one server may report several models).
pub(crate) fn engine_load(page: &str) -> (f64, f64) {
    let mut waiting = 0.0;
    let mut kv = 0.0f64;
    for line in page.lines().filter(|line| !line.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let name = name.split('{').next().unwrap_or(name);
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        match name {
            "vllm:num_requests_waiting" | "sglang:num_queue_reqs" => waiting += value,
            "vllm:gpu_cache_usage_perc" | "vllm:kv_cache_usage_perc" | "sglang:token_usage" => kv = kv.max(value),
            _ => {}
        }
    }
    (waiting, kv)
}

impl Gateway {
    /// Scrapes every target's `metrics_url` once a second for engine-metrics routing. Runs on
    /// the current tokio runtime until the returned handle is aborted.
    pub fn start_scraper(&self, client: reqwest::Client) -> Option<tokio::task::JoinHandle<()>> {
        let targets = self.scraped_targets();
        if targets.is_empty() {
            return None;
        }
        Some(tokio::spawn(async move {
            loop {
                for target in &targets {
                    let Some(url) = target.config.metrics_url.as_deref() else { continue };
                    let page =
                        tokio::time::timeout(Duration::from_millis(500), async { client.get(url).send().await.ok()?.text().await.ok() })
                            .await
                            .ok()
                            .flatten();
                    // An unreachable metrics page counts as a busy engine, not an idle one.
                    let load = page.as_deref().map_or((1_000.0, 1.0), engine_load);
                    if let Ok(mut current) = target.engine_load.lock() {
                        *current = load;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}

/// Dify's `_calc_response_usage`: each direction priced by `AIModel.get_price`, which reports a
/// zero price (in USD) for a direction the pricing leaves out.
fn priced(pricing: Option<&Pricing>, used: &TokenUsage) -> Usage {
    let prompt_tokens = i64::try_from(used.prompt_tokens).unwrap_or(i64::MAX);
    let completion_tokens = i64::try_from(used.completion_tokens).unwrap_or(i64::MAX);
    let direction = |unit_price: Option<Decimal>, tokens: i64| match (pricing, unit_price) {
        (Some(pricing), Some(unit_price)) => {
            (unit_price, pricing.unit, Decimal::price(tokens, unit_price, pricing.unit), pricing.currency.clone())
        }
        _ => (Decimal::default(), Decimal::default(), Decimal::default(), "USD".to_owned()),
    };
    let (prompt_unit_price, prompt_price_unit, prompt_price, currency) = direction(pricing.map(|pricing| pricing.input), prompt_tokens);
    let (completion_unit_price, completion_price_unit, completion_price, _) =
        direction(pricing.and_then(|pricing| pricing.output), completion_tokens);
    Usage {
        prompt_tokens,
        prompt_unit_price,
        prompt_price_unit,
        prompt_price,
        completion_tokens,
        completion_unit_price,
        completion_price_unit,
        completion_price,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
        total_price: prompt_price.plus(completion_price),
        currency,
        latency: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_load_reads_vllm_and_sglang_names() {
        let vllm = "# HELP x\nvllm:num_requests_waiting{model_name=\"a\"} 3\nvllm:num_requests_waiting{model_name=\"b\"} 2\nvllm:gpu_cache_usage_perc{model_name=\"a\"} 0.75\nvllm:num_requests_running 9\n";
        assert_eq!(engine_load(vllm), (5.0, 0.75));
        assert_eq!(engine_load("sglang:num_queue_reqs 4\nsglang:token_usage 0.5\n"), (4.0, 0.5));
    }

    #[test]
    fn the_retry_budget_stops_retries_at_about_a_fifth_of_requests() {
        let budget = RetryBudget::new();
        // The ten retries a second that are always allowed, then one per five requests.
        let mut allowed = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                allowed += 1;
            }
        }
        assert!((200..=215).contains(&allowed), "{allowed} retries for 1000 failing requests");
    }
}
