//! The `notifications` module: consumes `order.*` and `user.*` events from
//! `warren.notifications` and stores in-app notifications; `user.registered` also enqueues
//! the welcome e-mail (`email.send`). The order saga's `notification.send` command arrives on
//! the same queue and is handled as a saga participant
//! ([`crate::modules::order_notification::OrderNotification`]). The sync-mode twins,
//! [`NotificationListener`] and [`WelcomeEmailListener`], do the same work inside the request.
//!
//! Exactly-once effect: the notification row and the inbox row are written in one
//! transaction, so a redelivered event adds no second row. The welcome e-mail command is
//! published before that transaction with a message id derived from the event id (UUID v5),
//! so a retry republishes the *same* job and the e-mail module's inbox drops the repeat.

use chrono::Utc;
use sea_orm::{EntityTrait, Set, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use crate::{
    broker::{
        envelope::{Event, Outgoing},
        names::COMMANDS_EXCHANGE,
        publisher::Publisher,
    },
    dispatch::{Listener, ListenerError},
    jobs::{Consumer, Job, JobError},
    modules::{
        email::{Email, SendEmail},
        order_notification::OrderNotification,
    },
    saga::participants::ParticipantConsumer,
    store,
};

/// The saga command this module takes.
const SEND_COMMAND: &str = "notification.send";

/// The notifications module.
#[derive(Debug, Clone)]
pub(crate) struct Notifications {
    db: sea_orm::DatabaseConnection,
    publisher: Publisher,
    saga: ParticipantConsumer<OrderNotification>,
}

impl Notifications {
    /// The module, storing in `db` and enqueueing e-mails through `publisher`.
    pub(crate) fn new(db: sea_orm::DatabaseConnection, publisher: Publisher) -> Self {
        Self {
            saga: ParticipantConsumer::new(OrderNotification, db.clone(), publisher.clone()),
            db,
            publisher,
        }
    }

    async fn enqueue_welcome(&self, job: &Job) -> Result<(), JobError> {
        let Some(mail) = welcome_email(&job.event) else {
            tracing::info!("user.registered without an email: no welcome e-mail.");
            return Ok(());
        };
        let cmd = Outgoing::event(
            "email.send",
            job.event.aggregate_id.clone(),
            json!({"email": mail.email, "subject": mail.subject, "content": mail.content}),
        )
        .with_id(Uuid::new_v5(&job.message_id, b"welcome-email"))
        .caused_by(job);
        self.publisher
            .send(COMMANDS_EXCHANGE, None, &cmd)
            .await
            .map_err(|e| JobError::Error(format!("cannot enqueue the welcome e-mail: {e}")))
    }
}

/// The welcome e-mail for a `user.registered` event (None without an `email` field).
pub(crate) fn welcome_email(event: &Event) -> Option<SendEmail> {
    let email = event.data.get("email").and_then(|e| e.as_str())?;
    let name = event
        .data
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("there");
    Some(SendEmail {
        email: Some(email.to_owned()),
        subject: Some("Welcome!".to_owned()),
        content: format!(
            "<h1>Welcome, {}!</h1><p>Thanks for signing up.</p>",
            html_escape(name)
        ),
    })
}

/// The in-app notification row for `event`.
pub(crate) fn notification_row(event: &Event) -> entities::notifications::ActiveModel {
    let user_id = event
        .data
        .get("user_id")
        .and_then(|u| match u {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .or_else(|| event.aggregate_id.clone());
    entities::notifications::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user_id),
        event_id: Set(event.event_id),
        event_name: Set(event.event_name.clone()),
        title: Set(title(&event.event_name)),
        data: Set(event.data.clone()),
        created_at: Set(Utc::now()),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `order.created` -> `Order created`.
fn title(event_name: &str) -> String {
    let words = event_name.replace(['.', '_'], " ");
    let mut chars = words.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Consumer for Notifications {
    fn name(&self) -> &str {
        "notifications"
    }

    fn queue(&self) -> &str {
        crate::broker::names::NOTIFICATIONS_QUEUE
    }

    async fn on_failed(&self, job: &Job, error: &str) {
        if job.routing_key == SEND_COMMAND {
            self.saga.give_up(job, error).await;
        }
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        if job.routing_key == SEND_COMMAND {
            return self.saga.handle_command(job).await;
        }
        let event = &job.event;
        if event.event_name == "user.registered" {
            self.enqueue_welcome(job).await?;
        }
        let row = notification_row(event);
        let txn = self
            .db
            .begin()
            .await
            .map_err(|e| JobError::Error(format!("cannot begin a transaction: {e}")))?;
        entities::notifications::Entity::insert(row)
            .exec_without_returning(&txn)
            .await
            .map_err(|e| JobError::Error(format!("cannot store the notification: {e}")))?;
        store::inbox_mark(&txn, self.name(), job.message_id)
            .await
            .map_err(|e| JobError::Error(e.to_string()))?;
        txn.commit()
            .await
            .map_err(|e| JobError::Error(format!("cannot commit the notification: {e}")))
    }
}

/// Sync mode's notification listener: stores the in-app notification row, as the
/// `notifications` module does in async mode.
pub(crate) struct NotificationListener {
    db: sea_orm::DatabaseConnection,
}

impl NotificationListener {
    /// A notification listener writing to `db`.
    pub(crate) fn new(db: sea_orm::DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl Listener for NotificationListener {
    async fn handle(&self, event: &Event) -> Result<serde_json::Value, ListenerError> {
        use sea_orm::EntityTrait;
        entities::notifications::Entity::insert(notification_row(event))
            .exec_without_returning(&self.db)
            .await
            .map_err(|e| ListenerError::new(format!("cannot store the notification: {e}")))?;
        Ok(serde_json::json!({"notified": true}))
    }
}

/// Sync mode's welcome e-mail: sends it over SMTP inside the request and writes its
/// `email_log` row, as the article's synchronous `SendEmailJob` did.
pub(crate) struct WelcomeEmailListener {
    email: Email,
}

impl WelcomeEmailListener {
    /// A listener sending through `email`.
    pub(crate) fn new(email: Email) -> Self {
        Self { email }
    }
}

#[async_trait::async_trait]
impl Listener for WelcomeEmailListener {
    async fn handle(&self, event: &Event) -> Result<serde_json::Value, ListenerError> {
        let Some(mail) = welcome_email(event) else {
            return Ok(serde_json::json!({"sent": false, "reason": "no email in the event"}));
        };
        self.email
            .send(event.event_id, 1, mail)
            .await
            .map_err(|e| ListenerError::new(e.to_string()))?;
        Ok(serde_json::json!({"sent": true}))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn titles_read_as_sentences() {
        assert_eq!(super::title("order.created"), "Order created");
        assert_eq!(super::title("user.password_reset"), "User password reset");
    }
}
