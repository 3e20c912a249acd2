// @ts-check
/**
 * Draws the chat panel of the meeting page: the log, the composer, the recipient picker,
 * file sending (button and drag and drop) and the unread badge. What to show comes from a
 * `Chat` (chat.js); this module only draws and turns user input into calls on it.
 *
 * Security: every piece of text that came over the network (names, messages, file names) is
 * put into the page with `textContent` / text nodes, never parsed as HTML. Links are built as
 * elements and only for http(s) URLs (`linkify`, `safeHttpUrl`).
 */
import { PREVIEW_MIME_TYPES, checkText, fileUrlWithToken, formatSize, linkify, safeHttpUrl } from './chat.js';
import { openImageDetail } from './image-detail.js';

/** @typedef {import('./chat.js').Chat} Chat */
/** @typedef {import('./chat.js').OutboxEntry} OutboxEntry */
/** @typedef {import('./protocol.js').ChatMessage} ChatMessage */
/** @typedef {import('./protocol.js').ParticipantInfo} ParticipantInfo */

/**
 * @typedef {object} ChatElements
 * @property {HTMLElement} panel
 * @property {HTMLElement} log       the `role="log"` element
 * @property {HTMLButtonElement} older
 * @property {HTMLFormElement} form
 * @property {HTMLSelectElement} to
 * @property {HTMLButtonElement} attach
 * @property {HTMLInputElement} file
 * @property {HTMLTextAreaElement} text
 * @property {HTMLElement} status
 * @property {HTMLButtonElement} toggle
 * @property {HTMLElement} unread
 */

/** How close to the bottom (px) still counts as "reading the newest messages". */
const PINNED_SLACK_PX = 48;

export class ChatView {
  /**
   * @param {ChatElements} el
   * @param {Chat} chat
   * @param {(file: File) => Promise<unknown>} upload  sends a file into the room
   */
  constructor(el, chat, upload) {
    this.el = el;
    this.chat = chat;
    this.upload = upload;
    /** @type {string | null} */
    this.selfId = null;
    this.selfName = '';
    /** @type {Map<string, ParticipantInfo>} others in the room, by id */
    this.people = new Map();
    this.unread = 0;
    /** Whether the log shows its newest end; new messages keep it there. */
    this.pinned = true;
    /** Uploads under way, for the status line. */
    this.uploading = 0;
    /** @type {string | null} opens the room's files (`?token=`); new with every connection */
    this.fileToken = null;

    /** @param {Event} e */
    const detail = (e) => /** @type {CustomEvent} */ (e).detail;
    chat.addEventListener('message', (e) => this.onMessage(detail(e).message, detail(e).live));
    chat.addEventListener('pending', (e) => this.onPending(detail(e).entry));
    chat.addEventListener('sent', (e) => this.onSent(detail(e).clientId, detail(e).message));
    chat.addEventListener('failed', (e) => this.onFailed(detail(e).clientId, detail(e).reason));
    chat.addEventListener('more', (e) => {
      el.older.hidden = !detail(e).more;
      el.older.disabled = false;
    });

    el.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    el.text.addEventListener('keydown', (e) => {
      // Enter sends, Shift+Enter is a new line; Enter that confirms an IME composition is not
      // a send.
      if (e.key !== 'Enter' || e.shiftKey || e.isComposing || e.keyCode === 229) return;
      e.preventDefault();
      this.submit();
    });
    el.older.addEventListener('click', () => {
      if (chat.loadOlder()) el.older.disabled = true;
    });
    el.log.addEventListener('scroll', () => {
      const { scrollHeight, scrollTop, clientHeight } = el.log;
      this.pinned = scrollHeight - scrollTop - clientHeight < PINNED_SLACK_PX;
    });
    el.toggle.addEventListener('click', () => this.setOpen(el.panel.hidden));
    el.attach.addEventListener('click', () => el.file.click());
    el.file.addEventListener('change', () => {
      this.sendFiles([...(el.file.files ?? [])]);
      el.file.value = '';
    });
    this.setupDrop();
  }

  /**
   * @param {string} id
   * @param {string} name
   */
  setSelf(id, name) {
    this.selfId = id;
    this.selfName = name;
  }

  /**
   * The token file links carry from now on; links already shown get it too (the previous
   * connection's token ends with that connection).
   * @param {string | null} token
   */
  setFileToken(token) {
    this.fileToken = token;
    for (const a of this.el.log.querySelectorAll('a[data-file-url]')) {
      if (!(a instanceof HTMLAnchorElement)) continue;
      const url = fileUrlWithToken(a.dataset.fileUrl ?? '', token, location.origin);
      a.href = url;
      const img = a.querySelector('img');
      const shown = img?.dataset.src ? fileUrlWithToken(img.dataset.src, token, location.origin) : url;
      if (img && img.src !== shown) img.src = shown;
    }
  }

  /** @param {ParticipantInfo[]} participants  everyone else in the room */
  setParticipants(participants) {
    this.people.clear();
    for (const p of participants) this.people.set(p.id, p);
    this.renderRecipients();
  }

  /** @param {ParticipantInfo} p */
  participantSeen(p) {
    if (p.id === this.selfId) return;
    this.people.set(p.id, p);
    this.renderRecipients();
  }

  /** @param {string} id */
  participantLeft(id) {
    this.people.delete(id);
    this.renderRecipients();
  }

  /** @param {boolean} open */
  setOpen(open) {
    this.el.panel.hidden = !open;
    this.el.toggle.setAttribute('aria-expanded', String(open));
    if (open) {
      this.setUnread(0);
      this.scrollToEnd();
    }
  }

  // ---- composing ----

  submit() {
    const checked = checkText(this.el.text.value);
    if (!checked.ok) {
      this.setStatus(checked.error);
      return;
    }
    const toId = this.el.to.value;
    const to = toId ? this.people.get(toId) : undefined;
    if (toId && !to) {
      this.setStatus('That person has left. Pick someone else or Everyone.');
      return;
    }
    this.setStatus('');
    this.chat.send(checked.text, to ? { id: to.id, name: to.name } : null);
    this.el.text.value = '';
    this.el.text.focus();
  }

  /** Rebuilds the recipient options; a chosen recipient who left stays, marked and disabled. */
  renderRecipients() {
    const select = this.el.to;
    const chosen = select.value;
    const people = [...this.people.values()].filter((p) => p.kind !== 'camera');
    /** @type {Map<string, number>} */
    const nameCount = new Map();
    for (const p of people) nameCount.set(p.name, (nameCount.get(p.name) ?? 0) + 1);
    const options = [new Option('Everyone', '')];
    for (const p of people) {
      // Two people with one name are told apart by their ids.
      const label = (nameCount.get(p.name) ?? 0) > 1 ? `${p.name} (${p.id})` : p.name;
      options.push(new Option(label, p.id));
    }
    if (chosen && !this.people.has(chosen)) {
      const gone = [...select.options].find((o) => o.value === chosen);
      const option = new Option(`${(gone?.text ?? chosen).replace(/ \(left\)$/, '')} (left)`, chosen);
      option.disabled = true;
      options.push(option);
    }
    select.replaceChildren(...options);
    select.value = chosen;
  }

  /** @param {File[]} files */
  sendFiles(files) {
    for (const file of files) {
      this.uploading += 1;
      this.setStatus(`Sending ${file.name}…`);
      this.upload(file)
        .then(() => {
          this.uploading -= 1;
          if (this.uploading === 0) this.setStatus('');
        })
        .catch((err) => {
          this.uploading -= 1;
          this.setStatus(err instanceof Error ? err.message : String(err));
        });
    }
  }

  setupDrop() {
    const panel = this.el.panel;
    /** @param {DragEvent} e */
    const hasFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes('Files');
    panel.addEventListener('dragenter', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      panel.classList.add('dropping');
    });
    panel.addEventListener('dragover', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
    });
    panel.addEventListener('dragleave', (e) => {
      if (e.relatedTarget instanceof Node && panel.contains(e.relatedTarget)) return;
      panel.classList.remove('dropping');
    });
    panel.addEventListener('drop', (e) => {
      panel.classList.remove('dropping');
      if (!hasFiles(e)) return;
      e.preventDefault();
      this.sendFiles([...(e.dataTransfer?.files ?? [])]);
    });
  }

  /** @param {string} text */
  setStatus(text) {
    this.el.status.textContent = text;
  }

  /** @param {number} n */
  setUnread(n) {
    this.unread = n;
    const badge = this.el.unread;
    badge.hidden = n === 0;
    badge.replaceChildren(hiddenText(', '), String(n), hiddenText(' unread'));
  }

  // ---- the log ----

  /**
   * @param {ChatMessage} message
   * @param {boolean} live
   */
  onMessage(message, live) {
    const own = this.isOwn(message);
    this.place(this.renderMessage(message), message.id, own && live);
    if (live && !own && message.kind !== 'system' && this.el.panel.hidden) {
      this.setUnread(this.unread + 1);
    }
  }

  /** @param {OutboxEntry} entry */
  onPending(entry) {
    const draft = {
      id: 0,
      room: '',
      from: this.selfId ?? '',
      name: this.selfName,
      text: entry.text,
      ts: entry.createdAt,
      to: entry.to,
      private: entry.to !== null,
      kind: /** @type {const} */ ('text'),
      file: null,
      client_id: entry.clientId,
    };
    this.place(this.renderMessage(draft, { toName: entry.toName, pending: true }), null, true);
  }

  /**
   * @param {string} clientId
   * @param {ChatMessage} message
   */
  onSent(clientId, message) {
    const old = this.pendingNode(clientId);
    const toName = old?.dataset.toName ?? null;
    old?.remove();
    this.place(this.renderMessage(message, { toName, pending: false }), message.id, false);
  }

  /**
   * @param {string} clientId
   * @param {string} reason
   */
  onFailed(clientId, reason) {
    const node = this.pendingNode(clientId);
    if (!node) return;
    node.dataset.state = 'failed';
    const state = node.querySelector('.state');
    if (state) state.textContent = `Not sent: ${reason}`;
  }

  /** @param {string} clientId */
  pendingNode(clientId) {
    for (const node of this.el.log.querySelectorAll('[data-state="pending"], [data-state="failed"]')) {
      if (node instanceof HTMLElement && node.dataset.clientId === clientId) return node;
    }
    return null;
  }

  /**
   * Inserts a message node in id order; pending ones (id null) stay at the end.
   * @param {HTMLElement} node
   * @param {number | null} id
   * @param {boolean} reveal  scroll to it even if the reader had scrolled up
   */
  place(node, id, reveal) {
    const log = this.el.log;
    const wasPinned = this.pinned;
    const heightBefore = log.scrollHeight;
    const topBefore = log.scrollTop;
    /** @type {Element | null} */
    let before = null;
    if (id !== null) {
      for (const child of log.children) {
        const childId = child instanceof HTMLElement ? Number(child.dataset.id ?? NaN) : NaN;
        if (!(childId <= id)) {
          // NaN (pending) or a newer message: insert before it.
          before = child;
          break;
        }
      }
    }
    log.insertBefore(node, before);
    if (reveal || wasPinned) {
      this.scrollToEnd();
    } else if (node.offsetTop < topBefore) {
      // Older history went in above what the reader looks at: keep that in place.
      log.scrollTop = topBefore + (log.scrollHeight - heightBefore);
    }
  }

  scrollToEnd() {
    const log = this.el.log;
    log.scrollTop = log.scrollHeight;
    this.pinned = true;
  }

  /** @param {ChatMessage} m */
  isOwn(m) {
    // Ids are reused by name after a reload, so "from us" is "from our current id".
    return m.kind !== 'system' && this.selfId !== null && m.from === this.selfId;
  }

  /**
   * @param {ChatMessage} m
   * @param {object} [options]
   * @param {string | null} [options.toName]  the recipient's name when known from our outbox
   * @param {boolean} [options.pending]  ours, not yet stored by the server
   * @returns {HTMLElement}
   */
  renderMessage(m, { toName = null, pending = false } = {}) {
    const own = pending || this.isOwn(m);
    const node = document.createElement('div');
    node.className = 'msg';
    node.classList.add(`kind-${m.kind === 'system' || m.kind === 'file' ? m.kind : 'text'}`);
    if (own) node.classList.add('own');
    if (m.private) node.classList.add('private');
    if (m.id) node.dataset.id = String(m.id);
    if (m.client_id) node.dataset.clientId = m.client_id;
    node.dataset.from = m.from;
    node.dataset.state = pending ? 'pending' : 'sent';
    const recipientName = toName ?? (m.to ? this.people.get(m.to)?.name ?? m.to : null);
    if (recipientName) node.dataset.toName = recipientName;

    if (m.kind === 'system') {
      const text = document.createElement('span');
      text.className = 'body';
      text.textContent = m.text;
      node.append(text, ' ', timeElement(m.ts));
      return node;
    }

    const meta = document.createElement('div');
    meta.className = 'meta';
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = m.name;
    meta.append(who);
    if (own) meta.append(hiddenText(' (you)'));
    if (m.private) {
      const tag = document.createElement('span');
      tag.className = 'private-tag';
      tag.textContent = `private to ${m.to === this.selfId ? 'you' : recipientName ?? 'them'}`;
      meta.append(' ', tag);
    }
    meta.append(' ', timeElement(m.ts));
    const state = document.createElement('span');
    state.className = 'state';
    state.textContent = pending ? 'Sending…' : '';
    meta.append(' ', state);

    const body = document.createElement('div');
    body.className = 'body';
    if (m.kind === 'file' && m.file) body.append(...this.renderFile(m.file));
    else body.append(...textNodes(m.text));
    node.append(meta, body);
    return node;
  }

  /**
   * An inline preview for images the server serves inline, a download link for the rest.
   * @param {import('./protocol.js').FileRef} file
   * @returns {Node[]}
   */
  renderFile(file) {
    const plain = safeHttpUrl(file.url, document.baseURI);
    const caption = `${file.name} (${formatSize(file.size)})`;
    if (!plain) return [document.createTextNode(caption)];
    const url = fileUrlWithToken(plain, this.fileToken, location.origin);
    const link = document.createElement('a');
    link.href = url;
    link.dataset.fileUrl = plain;
    link.rel = 'noopener noreferrer';
    link.className = 'file';
    if (PREVIEW_MIME_TYPES.includes(file.mime.toLowerCase())) {
      link.target = '_blank';
      // The server's preview (upright, small, without the photo's EXIF and GPS); the link
      // opens the detail view, with the original one click further. GIFs play as they are:
      // a preview is a still JPEG, and GIF has no EXIF to strip.
      const img = document.createElement('img');
      img.dataset.src = file.mime.toLowerCase() === 'image/gif' ? plain : `${plain}/preview`;
      img.src = fileUrlWithToken(img.dataset.src, this.fileToken, location.origin);
      img.addEventListener(
        'error',
        () => {
          delete img.dataset.src;
          img.src = fileUrlWithToken(plain, this.fileToken, location.origin);
        },
        { once: true },
      );
      link.addEventListener('click', (e) => {
        if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
        e.preventDefault();
        openImageDetail({ name: file.name, url: plain, token: this.fileToken });
      });
      img.alt = file.name;
      img.decoding = 'async';
      img.addEventListener('load', () => this.pinned && this.scrollToEnd());
      const name = document.createElement('span');
      name.textContent = caption;
      link.append(img, name);
    } else {
      link.download = file.name;
      link.textContent = caption;
    }
    return [link];
  }
}

/**
 * Text with http(s) links as `<a>` elements and everything else as text nodes.
 * @param {string} text
 * @returns {Node[]}
 */
function textNodes(text) {
  return linkify(text).map((part) => {
    if (!part.href) return document.createTextNode(part.text);
    const a = document.createElement('a');
    a.href = part.href;
    a.textContent = part.text;
    a.rel = 'noopener noreferrer';
    a.target = '_blank';
    return a;
  });
}

/**
 * The time of a message in local time: "14:05" today, with the date otherwise; the full
 * date and time as a tooltip.
 * @param {number} ts  ms since the epoch
 */
function timeElement(ts) {
  const at = new Date(ts);
  const el = document.createElement('time');
  el.dateTime = at.toISOString();
  const today = new Date().toDateString() === at.toDateString();
  el.textContent = today
    ? at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : at.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  el.title = at.toLocaleString();
  return el;
}

/** @param {string} text  read by screen readers, not shown */
function hiddenText(text) {
  const span = document.createElement('span');
  span.className = 'visually-hidden';
  span.textContent = text;
  return span;
}
