//! Integration tests against a real RabbitMQ and PostgreSQL (see `scripts/test.sh`).

#![allow(unreachable_pub)]

mod asyncapi;
mod bad_input;
mod chaos;
mod cloudevents_ingress;
mod cloudevents_wire;
mod cluster;
mod console;
mod dashboards;
mod deployment;
mod dlq;
mod example_trip;
mod fuzz_corpus;
mod gate;
mod helpers;
mod http_front;
mod idempotency;
mod jobs;
mod modules;
mod nodes;
mod observability;
mod openapi;
#[cfg(feature = "otlp")]
mod otlp;
mod outbox;
mod participants;
mod pools;
mod publish;
mod reliability;
mod saga;
mod saga_http;
mod saga_http_load;
mod saga_http_participants;
mod saga_load;
mod scale;
mod scheduler;
mod security;
mod smtp;
mod subscription_ordering;
mod subscription_removal;
mod subscription_status;
mod subscription_tls;
mod subscriptions;
mod topology;
