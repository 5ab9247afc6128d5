-- Durable history: every stored publication of every channel, once, keyed by its position.
-- The epoch is part of the key: a channel whose broker state was lost starts a new epoch at
-- offset 1, and both epochs' rows must survive (readers of the old epoch learn that it ended).
CREATE TABLE chat_messages (
    channel    text        NOT NULL,
    epoch      text        NOT NULL,
    "offset"   bigint      NOT NULL,
    user_id    text,
    client_id  text,
    message_id text,
    data       bytea       NOT NULL,
    info       bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, epoch, "offset")
);
-- Retention deletes by age.
CREATE INDEX chat_messages_created_at ON chat_messages (created_at);

-- The newest position of each channel, kept with every batch: a node without Redis continues
-- its channels' offsets from here after a restart.
CREATE TABLE chat_channels (
    channel    text        PRIMARY KEY,
    epoch      text        NOT NULL,
    top        bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per settled assistant request.
CREATE TABLE chat_llm_usage (
    id         bigserial   PRIMARY KEY,
    request_id text,
    user_id    text        NOT NULL,
    plan       text        NOT NULL,
    provider   text,
    model      text,
    tokens_in  integer     NOT NULL DEFAULT 0,
    tokens_out integer     NOT NULL DEFAULT 0,
    outcome    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chat_llm_usage_user_time ON chat_llm_usage (user_id, created_at);
