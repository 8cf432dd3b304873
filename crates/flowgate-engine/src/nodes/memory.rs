//! A conversation's earlier turns as Dify's `TokenBufferMemory` hands them to model nodes: the
//! latest turns as user and assistant messages, then, when the model's context size is known,
//! the oldest messages dropped one at a time until the rest fit the tokens left.
//!
//! Dify counts tokens with the model's own tokenizer; flowgate estimates them (a token per
//! four ASCII characters, one per other character, three per message, as the OpenAI
//! counting adds), which errs towards dropping a little early.

use crate::inputs::PastTurn;
use crate::ports::ChatMessage;

/// The latest `turns` of `history` (oldest first), trimmed to `token_limit` when given.
pub(crate) fn history_messages(history: &[PastTurn], turns: usize, token_limit: Option<i64>) -> Vec<ChatMessage> {
    let recent = &history[history.len().saturating_sub(turns)..];
    let mut messages: Vec<ChatMessage> = recent
        .iter()
        .flat_map(|turn| [ChatMessage::text("user", turn.query.clone()), ChatMessage::text("assistant", turn.answer.clone())])
        .collect();
    if let Some(limit) = token_limit {
        let mut tokens = estimate_tokens(&messages);
        let mut drop = 0;
        while tokens > limit && messages.len() - drop > 1 {
            tokens -= message_tokens(&messages[drop]);
            drop += 1;
        }
        messages.drain(..drop);
    }
    messages
}

/// `get_history_prompt_text`: `Human: …` / `Assistant: …` lines.
pub(crate) fn history_text(messages: &[ChatMessage], human: &str, assistant: &str) -> String {
    messages
        .iter()
        .filter_map(|message| match message.role.as_str() {
            "user" => Some(format!("{human}: {}", message.content)),
            "assistant" => Some(format!("{assistant}: {}", message.content)),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The estimated prompt tokens of `messages`, with the reply's priming.
pub(crate) fn estimate_tokens(messages: &[ChatMessage]) -> i64 {
    messages.iter().map(message_tokens).sum::<i64>() + 3
}

fn message_tokens(message: &ChatMessage) -> i64 {
    let (ascii, other) = message
        .content
        .chars()
        .fold((0_i64, 0_i64), |(ascii, other), c| if c.is_ascii() { (ascii + 1, other) } else { (ascii, other + 1) });
    3 + (ascii + 3) / 4 + other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(count: usize) -> Vec<PastTurn> {
        (1..=count).map(|n| PastTurn { query: format!("question {n} {}", "x".repeat(36)), answer: format!("answer {n}") }).collect()
    }

    #[test]
    fn the_oldest_messages_go_first_until_the_rest_fit() {
        let history = turns(4);
        let all = history_messages(&history, 3, None);
        assert_eq!(all.len(), 6, "the window's turns");
        assert_eq!(all[0].content, history[1].query);
        // Each question is about 3 + 12 tokens, each answer 3 + 2.
        let limit = estimate_tokens(&all) - 15;
        let trimmed = history_messages(&history, 3, Some(limit));
        assert_eq!(trimmed.len(), 5, "one message dropped, the oldest");
        assert_eq!((trimmed[0].role.as_str(), trimmed[0].content.as_str()), ("assistant", "answer 2"));
        let one = history_messages(&history, 3, Some(0));
        assert_eq!(one.len(), 1, "the newest message always stays, as in Dify");
        assert_eq!(history_text(&trimmed[..2], "Human", "Assistant"), format!("Assistant: answer 2\nHuman: {}", history[2].query));
    }

    #[test]
    fn text_outside_ascii_counts_a_token_a_character() {
        assert_eq!(estimate_tokens(&[ChatMessage::text("user", "你好世界")]), 3 + 4 + 3);
        assert_eq!(estimate_tokens(&[ChatMessage::text("user", "hello world!")]), 3 + 3 + 3);
    }
}
