-- Retention by the publisher's plan: the plan a publication was sent under (NULL for the server
-- API). Deleting by namespace and age walks the created_at index.
ALTER TABLE chat_messages ADD COLUMN plan text;
