//! Between coditect's values and A2A's: agent cards, message parts, and the
//! metadata that carries deadlines, budgets and usage across the boundary.

use std::collections::HashMap;
use std::time::Duration;

use a2a_types::{
    AgentCapabilities, AgentCard as A2aCard, AgentExtension, AgentInterface, AgentSkill,
    HttpAuthSecurityScheme, Message, Part, PartContent, Role, SecurityScheme,
    TRANSPORT_PROTOCOL_JSONRPC,
};
use coditect_orchestrator::{AgentCard, Budget, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The URI of the card extension in which coditect publishes each skill's
/// input and output JSON Schema (A2A cards have no schema field; extensions
/// are the spec's place for such additions). Its `params` map a skill id to
/// `{"input_schema": …, "output_schema": …}`.
pub const SCHEMA_EXTENSION: &str = "urn:coditect:a2a:skill-schemas:v1";

/// Message metadata key: the caller's time left, in milliseconds.
pub const META_DEADLINE_MS: &str = "coditect.deadline_ms";
/// Message metadata key: the caller's remaining budget ([`WireBudget`]).
pub const META_BUDGET: &str = "coditect.budget";
/// Message metadata key: which of a published kind's capabilities to use.
pub const META_CAPABILITY: &str = "coditect.capability";
/// Reply metadata key: what the remote work spent ([`Usage`]).
pub const META_USAGE: &str = "coditect.usage";

/// The name of the security scheme coditect's server declares for its
/// bearer token.
pub const BEARER_SCHEME: &str = "bearer";

/// A run's remaining limits as they travel in a message's metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WireBudget {
    /// Delegation levels left below the remote agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u16>,
    /// Tokens left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_left: Option<u64>,
    /// Dollars left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_left: Option<f64>,
}

impl WireBudget {
    /// What a caller at `depth` with `budget` passes on.
    pub(crate) fn from_budget(budget: &Budget, depth: u16) -> Self {
        Self {
            max_depth: Some(budget.max_depth.saturating_sub(depth.saturating_add(1))),
            tokens_left: budget.tokens_left,
            cost_left: budget.cost_left,
        }
    }
}

/// The media types a JSON Schema's values travel as.
fn modes_for(schema: &Value) -> Vec<String> {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => vec!["text/plain".into()],
        Some(_) => vec!["application/json".into()],
        None => vec!["text/plain".into(), "application/json".into()],
    }
}

/// What [`a2a_card`] needs besides the coditect cards.
pub(crate) struct CardSpec<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub version: &'a str,
    pub url: &'a str,
    pub push_notifications: bool,
    pub bearer: bool,
}

/// The A2A card of coditect agents: one skill per capability (described by
/// the card that offers it), input/output modes from the schemas, schemas in
/// the [`SCHEMA_EXTENSION`], JSON-RPC at `url`, bearer auth if required.
pub(crate) fn a2a_card(spec: &CardSpec<'_>, cards: &[AgentCard]) -> A2aCard {
    let mut skills: Vec<AgentSkill> = Vec::new();
    let mut schemas: HashMap<String, Value> = HashMap::new();
    for card in cards {
        for capability in &card.capabilities {
            if skills.iter().any(|s| &s.id == capability) {
                continue;
            }
            let description = if card.description.is_empty() {
                format!("{} (coditect agent kind {})", card.name, card.kind)
            } else {
                card.description.clone()
            };
            skills.push(AgentSkill {
                id: capability.clone(),
                name: capability.clone(),
                description,
                tags: vec![card.kind.as_str().to_owned()],
                examples: None,
                input_modes: Some(modes_for(&card.input_schema)),
                output_modes: Some(modes_for(&card.output_schema)),
                security_requirements: None,
            });
            schemas.insert(
                capability.clone(),
                json!({"input_schema": card.input_schema, "output_schema": card.output_schema}),
            );
        }
    }
    let (security_schemes, security_requirements) = if spec.bearer {
        (
            Some(HashMap::from([(
                BEARER_SCHEME.to_owned(),
                SecurityScheme::HttpAuth(HttpAuthSecurityScheme {
                    scheme: "Bearer".into(),
                    description: Some("A bearer token in the Authorization header.".into()),
                    bearer_format: None,
                }),
            )])),
            Some(vec![HashMap::from([(
                BEARER_SCHEME.to_owned(),
                Vec::new(),
            )])]),
        )
    } else {
        (None, None)
    };
    A2aCard {
        name: spec.name.to_owned(),
        description: spec.description.to_owned(),
        version: spec.version.to_owned(),
        supported_interfaces: vec![AgentInterface::new(spec.url, TRANSPORT_PROTOCOL_JSONRPC)],
        capabilities: AgentCapabilities {
            streaming: Some(true),
            push_notifications: Some(spec.push_notifications),
            extensions: Some(vec![AgentExtension {
                uri: SCHEMA_EXTENSION.into(),
                description: Some("JSON Schemas of each skill's input and output.".into()),
                required: Some(false),
                params: Some(schemas),
            }]),
            extended_agent_card: None,
        },
        default_input_modes: vec!["text/plain".into(), "application/json".into()],
        default_output_modes: vec!["text/plain".into(), "application/json".into()],
        skills,
        provider: None,
        documentation_url: None,
        icon_url: None,
        security_schemes,
        security_requirements,
        signatures: None,
    }
}

/// The capabilities a remote A2A agent offers coditect: its skills' ids.
pub(crate) fn capabilities_of(card: &A2aCard) -> Vec<String> {
    let mut caps: Vec<String> = Vec::new();
    for skill in &card.skills {
        let id = skill.id.trim();
        if !id.is_empty() && !caps.iter().any(|c| c == id) {
            caps.push(id.to_owned());
        }
    }
    caps
}

/// The JSON value of one part: text as a string, data as itself, a file
/// (URL or bytes) as `{"file": <the part in A2A's JSON form>}`.
fn part_value(part: &Part) -> Value {
    match &part.content {
        PartContent::Text(t) => Value::String(t.clone()),
        PartContent::Data(d) => integral(d.clone()),
        PartContent::Url(_) | PartContent::Raw(_) => {
            json!({"file": serde_json::to_value(part).unwrap_or(Value::Null)})
        }
    }
}

/// The value with every whole double turned back into an integer: data
/// parts travel as a protobuf `Struct`, whose numbers are all doubles, so a
/// `1` sent arrives as `1.0` — and would no longer read as an integer type.
fn integral(value: Value) -> Value {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            // 2^53: past it a double no longer holds every whole number.
            Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => {
                if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                }
            }
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(integral).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, integral(v))).collect())
        }
        other => other,
    }
}

/// The value of a message's (or artifact's) parts as coditect sees it: one
/// data part is its value; text parts only are their text, joined; anything
/// else is the array of the parts' values. `None` when there are no parts.
pub(crate) fn value_of_parts(parts: &[Part]) -> Option<Value> {
    match parts {
        [] => None,
        [one] => Some(part_value(one)),
        many if many
            .iter()
            .all(|p| matches!(p.content, PartContent::Text(_))) =>
        {
            Some(Value::String(
                many.iter()
                    .filter_map(Part::as_text)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ))
        }
        many => Some(Value::Array(many.iter().map(part_value).collect())),
    }
}

/// The text of a message's text parts, joined (what a planner reads as a
/// goal); empty when it has none.
pub(crate) fn text_of(parts: &[Part]) -> String {
    parts
        .iter()
        .filter_map(Part::as_text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The parts a coditect value travels as: a string as text, anything else as
/// JSON data.
pub(crate) fn parts_of(value: &Value) -> Vec<Part> {
    match value {
        Value::String(s) => vec![Part::text(s.clone())],
        other => vec![Part::data(other.clone()).with_media_type("application/json")],
    }
}

/// An agent-role message holding `value`, with metadata.
pub(crate) fn agent_message(
    value: &Value,
    context_id: &str,
    task_id: &str,
    metadata: Option<HashMap<String, Value>>,
) -> Message {
    let mut m = Message::new(Role::Agent, parts_of(value));
    m.context_id = Some(context_id.to_owned());
    m.task_id = Some(task_id.to_owned());
    m.metadata = metadata;
    m
}

/// What a caller asked for in a message's metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CallerLimits {
    pub deadline: Option<Duration>,
    pub budget: Option<WireBudget>,
    pub capability: Option<String>,
}

/// A whole, non-negative number: metadata travels as a protobuf `Struct`,
/// whose numbers are doubles, so `1500` may arrive as `1500.0`.
fn whole(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // 2^53: past it a double no longer holds every whole number.
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_992.0)
        .then_some(f as u64)
}

/// Reads a [`WireBudget`] from its JSON form (numbers may be doubles).
fn wire_budget(v: &Value) -> Result<WireBudget, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("metadata {META_BUDGET} must be an object"))?;
    let field = |name: &str| -> Result<Option<u64>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => whole(v).map(Some).ok_or_else(|| {
                format!("metadata {META_BUDGET}.{name} must be a whole non-negative number")
            }),
        }
    };
    let cost_left = match obj.get("cost_left") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|c| c.is_finite())
                .ok_or_else(|| format!("metadata {META_BUDGET}.cost_left must be a number"))?,
        ),
    };
    let max_depth = match field("max_depth")? {
        Some(d) => Some(u16::try_from(d).map_err(|_| {
            format!(
                "metadata {META_BUDGET}.max_depth must be at most {}",
                u16::MAX
            )
        })?),
        None => None,
    };
    Ok(WireBudget {
        max_depth,
        tokens_left: field("tokens_left")?,
        cost_left,
    })
}

/// Reads the caller's limits from message (and request) metadata; a value
/// of the wrong shape is an error naming the key, not silently ignored.
pub(crate) fn caller_limits(
    metadata: &[Option<&HashMap<String, Value>>],
) -> Result<CallerLimits, String> {
    let mut limits = CallerLimits::default();
    for map in metadata.iter().flatten() {
        if let Some(v) = map.get(META_DEADLINE_MS) {
            let ms = whole(v).ok_or_else(|| {
                format!("metadata {META_DEADLINE_MS} must be a whole number of milliseconds")
            })?;
            limits.deadline = Some(Duration::from_millis(ms));
        }
        if let Some(v) = map.get(META_BUDGET) {
            limits.budget = Some(wire_budget(v)?);
        }
        if let Some(v) = map.get(META_CAPABILITY) {
            let c = v
                .as_str()
                .ok_or_else(|| format!("metadata {META_CAPABILITY} must be a string"))?;
            limits.capability = Some(c.to_owned());
        }
    }
    Ok(limits)
}

/// Reads the usage a reply reports, if it reports one of the right shape.
pub(crate) fn usage_of(metadata: Option<&HashMap<String, Value>>) -> Option<Usage> {
    let v = metadata?.get(META_USAGE)?;
    Some(Usage::new(
        whole(v.get("input_tokens")?)?,
        whole(v.get("output_tokens")?)?,
        v.get("cost_usd")?
            .as_f64()
            .filter(|c| c.is_finite() && *c >= 0.0)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parts_round_trip_strings_and_data() {
        for v in [json!("hello"), json!({"a": 1}), json!([1, 2]), json!(3)] {
            assert_eq!(value_of_parts(&parts_of(&v)), Some(v));
        }
        assert_eq!(value_of_parts(&[]), None);
        assert_eq!(
            value_of_parts(&[Part::text("a"), Part::text("b")]),
            Some(json!("a\nb"))
        );
        assert_eq!(
            value_of_parts(&[Part::text("a"), Part::data(json!(1))]),
            Some(json!(["a", 1]))
        );
    }

    #[test]
    fn whole_doubles_in_data_become_integers_again() {
        let part = Part::data(json!({"a": 1.0, "b": [2.0, -3.0, 0.5], "c": "x", "d": 1e300}));
        assert_eq!(
            value_of_parts(&[part]),
            Some(json!({"a": 1, "b": [2, -3, 0.5], "c": "x", "d": 1e300}))
        );
    }

    #[test]
    fn bad_metadata_is_an_error_naming_the_key() {
        let m = HashMap::from([(META_DEADLINE_MS.to_owned(), json!("soon"))]);
        let e = caller_limits(&[Some(&m)]).unwrap_err();
        assert!(e.contains(META_DEADLINE_MS), "{e}");
        let m = HashMap::from([(META_BUDGET.to_owned(), json!({"tokens_left": -1}))]);
        assert!(caller_limits(&[Some(&m)]).is_err());
        let m = HashMap::from([
            (META_DEADLINE_MS.to_owned(), json!(1500.0)),
            (
                META_BUDGET.to_owned(),
                json!({"tokens_left": 10.0, "cost_left": 0.5, "max_depth": 2}),
            ),
            (META_CAPABILITY.to_owned(), json!("research")),
        ]);
        let l = caller_limits(&[Some(&m)]).unwrap();
        assert_eq!(l.deadline, Some(Duration::from_millis(1500)));
        assert_eq!(l.budget.as_ref().unwrap().tokens_left, Some(10));
        assert_eq!(l.budget.unwrap().max_depth, Some(2));
        let m = HashMap::from([(META_DEADLINE_MS.to_owned(), json!(1.5))]);
        assert!(caller_limits(&[Some(&m)]).is_err());
        let u = HashMap::from([(
            META_USAGE.to_owned(),
            json!({"input_tokens": 3.0, "output_tokens": 4, "cost_usd": 0.25}),
        )]);
        assert_eq!(usage_of(Some(&u)), Some(Usage::new(3, 4, 0.25)));
        assert_eq!(l.capability.as_deref(), Some("research"));
    }

    #[test]
    fn card_has_a_skill_per_capability_and_the_schemas() {
        let card = AgentCard {
            kind: coditect_orchestrator::AgentKind::new("researcher").unwrap(),
            name: "researcher".into(),
            description: "Finds things.".into(),
            capabilities: vec!["research".into(), "lookup".into()],
            input_schema: json!({"type": "string"}),
            output_schema: json!({"type": "object"}),
        };
        let spec = CardSpec {
            name: "team",
            description: "d",
            version: "1",
            url: "http://127.0.0.1:1/",
            push_notifications: true,
            bearer: true,
        };
        let a = a2a_card(&spec, &[card]);
        assert_eq!(capabilities_of(&a), vec!["research", "lookup"]);
        assert_eq!(a.skills[0].description, "Finds things.");
        assert_eq!(
            a.skills[0].input_modes.as_deref(),
            Some(&["text/plain".to_owned()][..])
        );
        let ext = &a.capabilities.extensions.as_ref().unwrap()[0];
        assert_eq!(ext.uri, SCHEMA_EXTENSION);
        assert_eq!(
            ext.params.as_ref().unwrap()["research"]["output_schema"],
            json!({"type": "object"})
        );
        assert!(a.security_schemes.unwrap().contains_key(BEARER_SCHEME));
    }

    proptest! {
        #[test]
        fn caller_limits_never_panics(key in prop_oneof![
            Just(META_DEADLINE_MS), Just(META_BUDGET), Just(META_CAPABILITY), Just("other")
        ], raw in ".{0,40}") {
            let v: Value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
            let m = HashMap::from([(key.to_owned(), v)]);
            let _ = caller_limits(&[Some(&m)]);
        }

    }
}
