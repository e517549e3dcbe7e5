BEGIN TRANSACTION;
CREATE TABLE button_press (
	"key" VARCHAR(64) NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	pressed_at DATETIME NOT NULL, 
	PRIMARY KEY ("key"), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);
CREATE TABLE campaign (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	from_address VARCHAR(320) NOT NULL, 
	from_name VARCHAR(200) NOT NULL, 
	interval_seconds INTEGER NOT NULL, 
	batch_size INTEGER NOT NULL, 
	daily_cap INTEGER, 
	window_weekdays VARCHAR(20) NOT NULL, 
	window_start_hour INTEGER NOT NULL, 
	window_end_hour INTEGER NOT NULL, 
	timezone VARCHAR(64) NOT NULL, 
	last_claim_at DATETIME, 
	consecutive_failures INTEGER NOT NULL, 
	pause_reason TEXT, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "campaign" VALUES(1,'Demo: SendOnce','active','sales@example.com','SendOnce Demo',60,1,NULL,'0,1,2,3,4,5,6',0,24,'Europe/Warsaw',NULL,0,NULL,'2026-11-29 21:57:50.215994');
INSERT INTO "campaign" VALUES(2,'Oferta Q4','active','sales@example.com','',0,25,NULL,'0,1,2,3,4,5,6',0,24,'Europe/Warsaw','2026-11-29 21:57:50.404151',0,NULL,'2026-11-29 21:57:50.339310');
INSERT INTO "campaign" VALUES(3,'VIP','paused','sales@example.com','',0,5,NULL,'0,1,2,3,4,5,6',0,24,'Europe/Warsaw','2026-11-29 21:57:50.428175',0,'paused by hand','2026-11-29 21:57:50.409032');
CREATE TABLE campaign_lead (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	lead_id INTEGER NOT NULL, 
	variant_letter VARCHAR(2) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	enrolled_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_campaign_lead UNIQUE (campaign_id, lead_id), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id), 
	FOREIGN KEY(lead_id) REFERENCES lead (id)
);
INSERT INTO "campaign_lead" VALUES(1,1,1,'B','pending','2026-11-29 21:57:50.225470');
INSERT INTO "campaign_lead" VALUES(2,1,2,'B','pending','2026-11-29 21:57:50.225470');
INSERT INTO "campaign_lead" VALUES(3,1,3,'B','pending','2026-11-29 21:57:50.225470');
INSERT INTO "campaign_lead" VALUES(4,1,4,'B','pending','2026-11-29 21:57:50.225470');
INSERT INTO "campaign_lead" VALUES(5,2,1,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(6,2,2,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(7,2,3,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(8,2,4,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(9,2,5,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(10,2,6,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(11,2,7,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(12,2,8,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(13,2,9,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(14,2,10,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(15,2,11,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(16,2,12,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(17,2,13,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(18,2,14,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(19,2,15,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(20,2,16,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(21,2,17,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(22,2,18,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(23,2,19,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(24,2,20,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(25,2,21,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(26,2,22,'A','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(27,2,23,'B','sent','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(28,2,24,'B','sending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(29,2,25,'A','unknown','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(30,2,26,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(31,2,27,'A','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(32,2,28,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(33,2,29,'A','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(34,2,30,'A','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(35,2,31,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(36,2,32,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(37,2,33,'A','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(38,2,34,'A','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(39,2,35,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(40,2,36,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(41,2,37,'A','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(42,2,38,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(43,2,39,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(44,2,40,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(45,2,41,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(46,2,42,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(47,2,43,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(48,2,44,'B','pending','2026-11-29 21:57:50.347397');
INSERT INTO "campaign_lead" VALUES(49,3,7,'A','sent','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(50,3,10,'A','sent','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(51,3,13,'A','sent','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(52,3,16,'A','sent','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(53,3,19,'A','sent','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(54,3,22,'A','pending','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(55,3,25,'A','pending','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(56,3,28,'A','pending','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(57,3,31,'A','pending','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(58,3,34,'A','pending','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(59,3,37,'A','pending','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(60,3,40,'A','pending','2026-11-29 21:57:50.414370');
INSERT INTO "campaign_lead" VALUES(61,3,43,'A','pending','2026-11-29 21:57:50.414370');
CREATE TABLE campaign_state_count (
	campaign_id INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	n INTEGER NOT NULL, 
	PRIMARY KEY (campaign_id, state)
)
 WITHOUT ROWID

;
INSERT INTO "campaign_state_count" VALUES(1,'pending',4);
INSERT INTO "campaign_state_count" VALUES(2,'pending',19);
INSERT INTO "campaign_state_count" VALUES(2,'sending',1);
INSERT INTO "campaign_state_count" VALUES(2,'sent',23);
INSERT INTO "campaign_state_count" VALUES(2,'unknown',1);
INSERT INTO "campaign_state_count" VALUES(3,'pending',8);
INSERT INTO "campaign_state_count" VALUES(3,'sending',0);
INSERT INTO "campaign_state_count" VALUES(3,'sent',5);
CREATE TABLE lead (
	id INTEGER NOT NULL, 
	email VARCHAR(320) NOT NULL, 
	first_name VARCHAR(200) NOT NULL, 
	last_name VARCHAR(200) NOT NULL, 
	company VARCHAR(200) NOT NULL, 
	fields JSON NOT NULL, 
	tags VARCHAR(500) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (email)
);
INSERT INTO "lead" VALUES(1,'anna.nowak@example.com','Anna','Nowak','Kowalski i Syn','{"city": "Krak\u00f3w"}','','2026-11-29 21:57:50.213784');
INSERT INTO "lead" VALUES(2,'jan.kowalski@example.com','Jan','Kowalski','Budimex Demo','{"city": "Warszawa"}','','2026-11-29 21:57:50.213784');
INSERT INTO "lead" VALUES(3,'zofia.wisniewska@example.com','Zofia','Wiśniewska','Demo Sp. z o.o.','{"city": "Gda\u0144sk"}','','2026-11-29 21:57:50.213784');
INSERT INTO "lead" VALUES(4,'piotr.zielinski@example.com','Piotr','Zieliński','Przykład SA','{"city": "Pozna\u0144"}','','2026-11-29 21:57:50.213784');
INSERT INTO "lead" VALUES(5,'lead1@example.com','Imię1','Nazwisko1','Firma 1','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(6,'lead2@example.com','Imię2','Nazwisko2','Firma 2','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(7,'lead3@example.com','Imię3','Nazwisko3','Firma 3','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(8,'lead4@example.com','Imię4','Nazwisko4','Firma 4','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(9,'lead5@example.com','Imię5','Nazwisko5','Firma 5','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(10,'lead6@example.com','Imię6','Nazwisko6','Firma 6','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(11,'lead7@example.com','Imię7','Nazwisko7','Firma 0','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(12,'lead8@example.com','Imię8','Nazwisko8','Firma 1','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(13,'lead9@example.com','Imię9','Nazwisko9','Firma 2','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(14,'lead10@example.com','Imię10','Nazwisko10','Firma 3','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(15,'lead11@example.com','Imię11','Nazwisko11','Firma 4','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(16,'lead12@example.com','Imię12','Nazwisko12','Firma 5','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(17,'lead13@example.com','Imię13','Nazwisko13','Firma 6','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(18,'lead14@example.com','Imię14','Nazwisko14','Firma 0','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(19,'lead15@example.com','Imię15','Nazwisko15','Firma 1','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(20,'lead16@example.com','Imię16','Nazwisko16','Firma 2','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(21,'lead17@example.com','Imię17','Nazwisko17','Firma 3','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(22,'lead18@example.com','Imię18','Nazwisko18','Firma 4','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(23,'lead19@example.com','Imię19','Nazwisko19','Firma 5','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(24,'lead20@example.com','Imię20','Nazwisko20','Firma 6','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(25,'lead21@example.com','Imię21','Nazwisko21','Firma 0','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(26,'lead22@example.com','Imię22','Nazwisko22','Firma 1','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(27,'lead23@example.com','Imię23','Nazwisko23','Firma 2','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(28,'lead24@example.com','Imię24','Nazwisko24','Firma 3','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(29,'lead25@example.com','Imię25','Nazwisko25','Firma 4','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(30,'lead26@example.com','Imię26','Nazwisko26','Firma 5','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(31,'lead27@example.com','Imię27','Nazwisko27','Firma 6','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(32,'lead28@example.com','Imię28','Nazwisko28','Firma 0','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(33,'lead29@example.com','Imię29','Nazwisko29','Firma 1','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(34,'lead30@example.com','Imię30','Nazwisko30','Firma 2','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(35,'lead31@example.com','Imię31','Nazwisko31','Firma 3','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(36,'lead32@example.com','Imię32','Nazwisko32','Firma 4','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(37,'lead33@example.com','Imię33','Nazwisko33','Firma 5','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(38,'lead34@example.com','Imię34','Nazwisko34','Firma 6','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(39,'lead35@example.com','Imię35','Nazwisko35','Firma 0','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(40,'lead36@example.com','Imię36','Nazwisko36','Firma 1','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(41,'lead37@example.com','Imię37','Nazwisko37','Firma 2','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(42,'lead38@example.com','Imię38','Nazwisko38','Firma 3','{}','std','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(43,'lead39@example.com','Imię39','Nazwisko39','Firma 4','{}','vip','2026-11-29 21:57:50.335388');
INSERT INTO "lead" VALUES(44,'lead40@example.com','Imię40','Nazwisko40','Firma 5','{}','std','2026-11-29 21:57:50.335388');
CREATE TABLE scheduler_lease (
	name VARCHAR(50) NOT NULL, 
	holder VARCHAR(200) NOT NULL, 
	epoch INTEGER NOT NULL, 
	heartbeat_at DATETIME, 
	expires_at DATETIME, 
	PRIMARY KEY (name)
);
INSERT INTO "scheduler_lease" VALUES('scheduler','',2,'2026-11-29 21:57:50.428175','2026-11-29 21:57:50.430671');
CREATE TABLE send_log (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	lead_id INTEGER NOT NULL, 
	variant_letter VARCHAR(2) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME, 
	"trigger" VARCHAR(16) NOT NULL, 
	worker VARCHAR(200) NOT NULL, 
	lease_epoch INTEGER, 
	message_id VARCHAR(300) NOT NULL, 
	created_at DATETIME NOT NULL, 
	claimed_at DATETIME NOT NULL, 
	sent_at DATETIME, 
	smtp_reply TEXT, 
	decided_by VARCHAR(320), 
	PRIMARY KEY (id), 
	CONSTRAINT uq_send_log_campaign_lead_variant UNIQUE (campaign_id, lead_id, variant_letter), 
	CONSTRAINT uq_send_log_campaign_lead UNIQUE (campaign_id, lead_id), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id), 
	FOREIGN KEY(lead_id) REFERENCES lead (id)
);
INSERT INTO "send_log" VALUES(1,2,1,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.1@example.com>','2026-11-29 21:57:50.356154','2026-11-29 21:57:50.356154','2026-11-29 21:57:50.360148','outbox sendonce.2.1@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(2,2,2,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.2@example.com>','2026-11-29 21:57:50.360160','2026-11-29 21:57:50.360160','2026-11-29 21:57:50.362434','outbox sendonce.2.2@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(3,2,3,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.3@example.com>','2026-11-29 21:57:50.362444','2026-11-29 21:57:50.362444','2026-11-29 21:57:50.364402','outbox sendonce.2.3@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(4,2,4,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.4@example.com>','2026-11-29 21:57:50.364413','2026-11-29 21:57:50.364413','2026-11-29 21:57:50.366347','outbox sendonce.2.4@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(5,2,5,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.5@example.com>','2026-11-29 21:57:50.366358','2026-11-29 21:57:50.366358','2026-11-29 21:57:50.368522','outbox sendonce.2.5@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(6,2,6,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.6@example.com>','2026-11-29 21:57:50.368533','2026-11-29 21:57:50.368533','2026-11-29 21:57:50.370372','outbox sendonce.2.6@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(7,2,7,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.7@example.com>','2026-11-29 21:57:50.370382','2026-11-29 21:57:50.370382','2026-11-29 21:57:50.372192','outbox sendonce.2.7@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(8,2,8,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.8@example.com>','2026-11-29 21:57:50.372203','2026-11-29 21:57:50.372203','2026-11-29 21:57:50.374463','outbox sendonce.2.8@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(9,2,9,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.9@example.com>','2026-11-29 21:57:50.374474','2026-11-29 21:57:50.374474','2026-11-29 21:57:50.376232','outbox sendonce.2.9@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(10,2,10,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.10@example.com>','2026-11-29 21:57:50.376241','2026-11-29 21:57:50.376241','2026-11-29 21:57:50.378222','outbox sendonce.2.10@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(11,2,11,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.11@example.com>','2026-11-29 21:57:50.378231','2026-11-29 21:57:50.378231','2026-11-29 21:57:50.380207','outbox sendonce.2.11@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(12,2,12,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.12@example.com>','2026-11-29 21:57:50.380218','2026-11-29 21:57:50.380218','2026-11-29 21:57:50.382069','outbox sendonce.2.12@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(13,2,13,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.13@example.com>','2026-11-29 21:57:50.382078','2026-11-29 21:57:50.382078','2026-11-29 21:57:50.383939','outbox sendonce.2.13@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(14,2,14,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.14@example.com>','2026-11-29 21:57:50.383948','2026-11-29 21:57:50.383948','2026-11-29 21:57:50.385745','outbox sendonce.2.14@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(15,2,15,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.15@example.com>','2026-11-29 21:57:50.385754','2026-11-29 21:57:50.385754','2026-11-29 21:57:50.387793','outbox sendonce.2.15@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(16,2,16,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.16@example.com>','2026-11-29 21:57:50.387803','2026-11-29 21:57:50.387803','2026-11-29 21:57:50.389713','outbox sendonce.2.16@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(17,2,17,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.17@example.com>','2026-11-29 21:57:50.389724','2026-11-29 21:57:50.389724','2026-11-29 21:57:50.391447','outbox sendonce.2.17@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(18,2,18,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.18@example.com>','2026-11-29 21:57:50.391456','2026-11-29 21:57:50.391456','2026-11-29 21:57:50.393213','outbox sendonce.2.18@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(19,2,19,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.19@example.com>','2026-11-29 21:57:50.393222','2026-11-29 21:57:50.393222','2026-11-29 21:57:50.394933','outbox sendonce.2.19@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(20,2,20,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.20@example.com>','2026-11-29 21:57:50.394942','2026-11-29 21:57:50.394942','2026-11-29 21:57:50.396827','outbox sendonce.2.20@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(21,2,21,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.21@example.com>','2026-11-29 21:57:50.396837','2026-11-29 21:57:50.396837','2026-11-29 21:57:50.398752','outbox sendonce.2.21@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(22,2,22,'A','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.22@example.com>','2026-11-29 21:57:50.398761','2026-11-29 21:57:50.398761','2026-11-29 21:57:50.400651','outbox sendonce.2.22@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(23,2,23,'B','sent',1,NULL,'cli','vm:13917',1,'<sendonce.2.23@example.com>','2026-11-29 21:57:50.400661','2026-11-29 21:57:50.400661','2026-11-29 21:57:50.402389','outbox sendonce.2.23@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(24,2,24,'B','retry',2,'2026-11-29 22:57:50','cli','vm:13917',1,'<sendonce.2.24@example.com>','2026-11-29 21:57:50.402398','2026-11-29 21:57:50.402398',NULL,'451 4.7.1 try again later',NULL);
INSERT INTO "send_log" VALUES(25,2,25,'A','unknown',1,NULL,'cli','gone-host:99999',1,'<sendonce.2.25@example.com>','2026-11-29 21:57:50.404151','2026-11-29 20:57:50',NULL,'unknown: no outcome in time (gone-host:99999); not re-sent',NULL);
INSERT INTO "send_log" VALUES(26,3,7,'A','sent',1,NULL,'cli','vm:13917',2,'<sendonce.3.26@example.com>','2026-11-29 21:57:50.420101','2026-11-29 21:57:50.420101','2026-11-29 21:57:50.422252','outbox sendonce.3.26@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(27,3,10,'A','sent',1,NULL,'cli','vm:13917',2,'<sendonce.3.27@example.com>','2026-11-29 21:57:50.422261','2026-11-29 21:57:50.422261','2026-11-29 21:57:50.424045','outbox sendonce.3.27@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(28,3,13,'A','sent',1,NULL,'cli','vm:13917',2,'<sendonce.3.28@example.com>','2026-11-29 21:57:50.424054','2026-11-29 21:57:50.424054','2026-11-29 21:57:50.426169','outbox sendonce.3.28@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(29,3,16,'A','sent',1,NULL,'cli','vm:13917',2,'<sendonce.3.29@example.com>','2026-11-29 21:57:50.426179','2026-11-29 21:57:50.426179','2026-11-29 21:57:50.428166','outbox sendonce.3.29@example.com.eml',NULL);
INSERT INTO "send_log" VALUES(30,3,19,'A','sent',1,NULL,'cli','vm:13917',2,'<sendonce.3.30@example.com>','2026-11-29 21:57:50.428175','2026-11-29 21:57:50.428175','2026-11-29 21:57:50.430049','outbox sendonce.3.30@example.com.eml',NULL);
CREATE TABLE suppression (
	id INTEGER NOT NULL, 
	email VARCHAR(320) NOT NULL, 
	reason VARCHAR(50) NOT NULL, 
	detail TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (email)
);
INSERT INTO "suppression" VALUES(1,'lead40@example.com','manual','imported from CSV','2026-11-29 21:57:50.434820');
INSERT INTO "suppression" VALUES(2,'nobody@example.org','manual','imported from CSV','2026-11-29 21:57:50.434820');
CREATE TABLE timeline_hour (
	campaign_id INTEGER NOT NULL, 
	hour VARCHAR(16) NOT NULL, 
	"trigger" VARCHAR(16) NOT NULL, 
	sends INTEGER NOT NULL, 
	PRIMARY KEY (campaign_id, hour, "trigger")
)
 WITHOUT ROWID

;
INSERT INTO "timeline_hour" VALUES(2,'2026-11-29 20:00','cli',1);
INSERT INTO "timeline_hour" VALUES(2,'2026-11-29 21:00','cli',23);
INSERT INTO "timeline_hour" VALUES(3,'2026-11-29 21:00','cli',5);
CREATE TABLE user (
	id INTEGER NOT NULL, 
	email VARCHAR(320) NOT NULL, 
	password_hash VARCHAR(300) NOT NULL, 
	language VARCHAR(5) NOT NULL, 
	failed_logins INTEGER NOT NULL, 
	locked_until DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (email)
);
INSERT INTO "user" VALUES(1,'admin@example.com','scrypt:32768:8:1$WwJ5I5OxHAuvtpgN$73a1dfe53410919713673ba5c2581e9655a7660d4008813c45bb6b3420096a144b74414e395492e5d3936fe29b098ea5b4616530ad55cb204360246be6f6a4b2','pl',0,NULL);
INSERT INTO "user" VALUES(2,'ops@example.com','scrypt:32768:8:1$oZyN8MbMBV1aTkDn$3b4893892a00e584dc13651c56275a8629d397360343cf95adb76a7ff4511547cb01e5e82513e3e3d478c0a78da9978a705f0685c53cb39275da5ab658b01a44','pl',0,NULL);
CREATE TABLE variant (
	id INTEGER NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	letter VARCHAR(2) NOT NULL, 
	subject TEXT NOT NULL, 
	body TEXT NOT NULL, 
	weight INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (campaign_id, letter), 
	FOREIGN KEY(campaign_id) REFERENCES campaign (id)
);
INSERT INTO "variant" VALUES(1,1,'A','Dzień dobry, {{ first_name }}!','Cześć {{ first_name }},

piszę do {{ company }} z {{ city }}.

Wypisz się: {{ unsubscribe_url }}
',1);
INSERT INTO "variant" VALUES(2,1,'B','{{ company }}: krótkie pytanie','Dzień dobry {{ first_name }} {{ last_name }},

czy {{ company }} szuka nowych klientów?

Wypisz się: {{ unsubscribe_url }}
',1);
INSERT INTO "variant" VALUES(3,2,'A','Cześć {{ first_name }}','Treść A {{ company }}',1);
INSERT INTO "variant" VALUES(4,2,'B','Witaj {{ first_name }}','Treść B',1);
INSERT INTO "variant" VALUES(5,3,'A','VIP {{ first_name }}','VIP',1);
CREATE INDEX ix_campaign_lead_next ON campaign_lead (campaign_id, state, id);
CREATE INDEX ix_send_log_campaign_status ON send_log (campaign_id, status);
CREATE INDEX ix_send_log_status ON send_log (status, next_attempt_at);
CREATE INDEX ix_send_log_campaign_created ON send_log (campaign_id, created_at);
CREATE INDEX ix_send_log_campaign_claimed ON send_log (campaign_id, claimed_at);
CREATE INDEX ix_send_log_claimed ON send_log (claimed_at);
CREATE INDEX ix_send_log_last_sent ON send_log (campaign_id, status, sent_at);
CREATE INDEX ix_send_log_campaign ON send_log (campaign_id);
CREATE TRIGGER campaign_state_count_insert AFTER INSERT ON campaign_lead BEGIN INSERT INTO campaign_state_count (campaign_id, state, n) VALUES (NEW.campaign_id, NEW.state, 1) ON CONFLICT (campaign_id, state) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER campaign_state_count_delete AFTER DELETE ON campaign_lead BEGIN UPDATE campaign_state_count SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND state = OLD.state; END;
CREATE TRIGGER campaign_state_count_update AFTER UPDATE OF campaign_id, state ON campaign_lead WHEN OLD.campaign_id IS NOT NEW.campaign_id OR OLD.state IS NOT NEW.state BEGIN UPDATE campaign_state_count SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND state = OLD.state; INSERT INTO campaign_state_count (campaign_id, state, n) VALUES (NEW.campaign_id, NEW.state, 1) ON CONFLICT (campaign_id, state) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER timeline_hour_insert AFTER INSERT ON send_log WHEN NEW.status IN ('sent', 'unknown') BEGIN INSERT INTO timeline_hour (campaign_id, hour, "trigger", sends) SELECT NEW.campaign_id, strftime('%Y-%m-%d %H:00', NEW.claimed_at), NEW."trigger", 1 WHERE NEW.status IN ('sent', 'unknown') ON CONFLICT (campaign_id, hour, "trigger") DO UPDATE SET sends = sends + 1; END;
CREATE TRIGGER timeline_hour_update AFTER UPDATE OF status, claimed_at, campaign_id, "trigger" ON send_log WHEN (OLD.status IN ('sent', 'unknown')) <> (NEW.status IN ('sent', 'unknown')) OR (NEW.status IN ('sent', 'unknown') AND (OLD.claimed_at IS NOT NEW.claimed_at OR OLD.campaign_id IS NOT NEW.campaign_id OR OLD."trigger" IS NOT NEW."trigger")) BEGIN UPDATE timeline_hour SET sends = sends - 1 WHERE campaign_id = OLD.campaign_id AND hour = strftime('%Y-%m-%d %H:00', OLD.claimed_at) AND "trigger" = OLD."trigger" AND OLD.status IN ('sent', 'unknown'); INSERT INTO timeline_hour (campaign_id, hour, "trigger", sends) SELECT NEW.campaign_id, strftime('%Y-%m-%d %H:00', NEW.claimed_at), NEW."trigger", 1 WHERE NEW.status IN ('sent', 'unknown') ON CONFLICT (campaign_id, hour, "trigger") DO UPDATE SET sends = sends + 1; END;
CREATE TRIGGER timeline_hour_delete AFTER DELETE ON send_log WHEN OLD.status IN ('sent', 'unknown') BEGIN UPDATE timeline_hour SET sends = sends - 1 WHERE campaign_id = OLD.campaign_id AND hour = strftime('%Y-%m-%d %H:00', OLD.claimed_at) AND "trigger" = OLD."trigger" AND OLD.status IN ('sent', 'unknown'); END;
COMMIT;
