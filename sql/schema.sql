-- Example schema of the job-management application that walhook watches,
-- for PostgreSQL 15, with a few seed rows. `walhook demo` and the integration
-- tests load it into an empty database, and config.toml maps these columns.
-- The application owns these tables; walhook only reads them.
-- gen_random_uuid() is built in from PostgreSQL 13 on.

-- Contractor companies that perform the audits and retrofits.
CREATE TABLE companies (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    phone       text,
    website     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Utility or agency incentive programs, each with its approved companies.
CREATE TABLE programs (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE program_companies (
    program_id  bigint NOT NULL REFERENCES programs (id),
    company_id  bigint NOT NULL REFERENCES companies (id),
    PRIMARY KEY (program_id, company_id)
);

-- Users of the application; CHAT_POSTED's `accountFullName` is first and last name.
CREATE TABLE accounts (
    id          bigint PRIMARY KEY,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    email       text NOT NULL UNIQUE,
    company_id  bigint REFERENCES companies (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Job stages in workflow order.
CREATE TABLE stages (
    id    integer PRIMARY KEY,
    name  text NOT NULL UNIQUE
);

-- One home energy audit or retrofit project.
CREATE TABLE jobs (
    id                bigserial PRIMARY KEY,
    alt_id            text,                                  -- the company's or program's own numbering
    account_id        bigint REFERENCES accounts (id),       -- NULL while unassigned
    company_id        bigint NOT NULL REFERENCES companies (id),
    program_id        bigint REFERENCES programs (id),
    stage_id          integer NOT NULL DEFAULT 1 REFERENCES stages (id),
    stage_changed_at  timestamptz NOT NULL DEFAULT now(),
    first_modeled_at  timestamptz,                           -- set when the energy model first runs
    first_name        text NOT NULL,                         -- the homeowner
    last_name         text NOT NULL,
    email             text,
    address_1         text NOT NULL,
    address_2         text,
    city              text NOT NULL,
    state             char(2) NOT NULL,
    zip               text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_company_id ON jobs (company_id);
CREATE INDEX jobs_program_id ON jobs (program_id);

-- The activity feed of each job: user messages, file uploads and system posts.
CREATE TABLE chats (
    uuid        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id      bigint NOT NULL REFERENCES jobs (id),
    account_id  bigint REFERENCES accounts (id),
    message     text,
    file_name   text,
    file_uuid   uuid,
    file_url    text,
    is_system   boolean NOT NULL DEFAULT false,       -- automatic milestone posts
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz,
    deleted_at  timestamptz,
    CHECK (message IS NOT NULL OR file_uuid IS NOT NULL)
);

CREATE INDEX chats_job_id ON chats (job_id);

-- Home Energy Score assessments, one per label issued by DOE's scoring tool.
CREATE TABLE hes_scores (
    id               bigserial PRIMARY KEY,
    job_id           bigint NOT NULL REFERENCES jobs (id),
    label_number     integer,
    assessment_type  text NOT NULL CHECK (assessment_type IN (
                         'initial', 'final', 'qa', 'alternative', 'test',
                         'corrected', 'mentor', 'preconstruction')),
    base_score       integer CHECK (base_score BETWEEN 1 AND 10),
    package_score    integer CHECK (package_score BETWEEN 1 AND 10),
    assessment_date  date NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX hes_scores_job_id ON hes_scores (job_id);

-- Workflow steps that programs define, such as a review before payment.
CREATE TABLE ticket_templates (
    id          bigint PRIMARY KEY,
    program_id  bigint REFERENCES programs (id),
    name        text NOT NULL
);

-- A ticket made from a template for one job, moving through text statuses.
CREATE TABLE tickets (
    id           bigserial PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES jobs (id),
    template_id  bigint NOT NULL REFERENCES ticket_templates (id),
    status       text NOT NULL DEFAULT 'Draft',
    updated_by   bigint REFERENCES accounts (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tickets_job_id ON tickets (job_id);

-- Webhook subscriptions that company and program administrators define.
-- `secret` contains one or more space-separated `whsec_` secrets; `events`
-- NULL or empty means every event.
CREATE TABLE webhook_subscriptions (
    id          bigserial PRIMARY KEY,
    company_id  bigint REFERENCES companies (id),
    program_id  bigint REFERENCES programs (id),
    url         text NOT NULL,
    secret      text NOT NULL,
    events      text[],
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((company_id IS NULL) <> (program_id IS NULL))
);

-- UPDATEs and DELETEs carry the whole old row in the WAL, so walhook can
-- compare old and new values of any column.
ALTER TABLE jobs REPLICA IDENTITY FULL;
ALTER TABLE chats REPLICA IDENTITY FULL;
ALTER TABLE hes_scores REPLICA IDENTITY FULL;
ALTER TABLE tickets REPLICA IDENTITY FULL;

-- Seed rows. Names, addresses and e-mail addresses are invented.
INSERT INTO stages (id, name) VALUES
    (1, 'Lead'), (2, 'Audit'), (3, 'Bid Proposed'), (4, 'Bid Approved'),
    (5, 'Retrofit In Progress'), (6, 'Retrofit Complete'), (7, 'QA'),
    (8, 'Uncategorized'), (9, 'Archived Won'), (10, 'Archived Lost');

INSERT INTO companies (id, name, phone, website) VALUES
    (101, 'Bright Path Home Performance', '303-555-0142', 'https://brightpath.example.com'),
    (102, 'Cedar Ridge Energy Services', '720-555-0187', 'https://cedarridge.example.com');

INSERT INTO programs (id, name) VALUES
    (7, 'Front Range Home Efficiency Rebates');

INSERT INTO program_companies (program_id, company_id) VALUES (7, 101), (7, 102);

INSERT INTO accounts (id, first_name, last_name, email, company_id) VALUES
    (125, 'Alex', 'Moreno', 'alex.moreno@brightpath.example.com', 101),
    (126, 'Priya', 'Natarajan', 'priya.natarajan@brightpath.example.com', 101),
    (210, 'Dana', 'Whitfield', 'dana.whitfield@cedarridge.example.com', 102),
    (301, 'Sam', 'Okafor', 'sam.okafor@frontrange.example.org', NULL);

INSERT INTO ticket_templates (id, program_id, name) VALUES
    (41, 7, 'Test-in Review'),
    (42, 7, 'Rebate Payment Approval');
