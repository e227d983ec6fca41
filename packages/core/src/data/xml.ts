/**
 * A minimal XML reader for annotation files (Pascal VOC): elements, attributes-free access to
 * children and text, comments / processing instructions / CDATA handled, the five predefined
 * entities and numeric character references decoded. Not a general XML library: no namespaces,
 * no DTDs.
 */

export interface XmlElement {
  name: string;
  children: XmlElement[];
  /** Concatenated text directly inside this element, trimmed. */
  text: string;
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (m, body: string) => {
    if (body.startsWith('#x')) return String.fromCodePoint(parseInt(body.slice(2), 16));
    if (body.startsWith('#')) return String.fromCodePoint(parseInt(body.slice(1), 10));
    return ENTITIES[body] ?? m;
  });
}

/** Parses `text` and returns the root element; errors name `file` and the offending position. */
export function parseXml(text: string, file: string): XmlElement {
  const fail = (pos: number, what: string): never => {
    const line = text.slice(0, pos).split('\n').length;
    throw new Error(`${file}: malformed XML at line ${line}: ${what}`);
  };
  const stack: { el: XmlElement; parts: string[] }[] = [];
  let root: XmlElement | null = null;
  let pos = 0;
  while (pos < text.length) {
    const lt = text.indexOf('<', pos);
    const chunk = lt < 0 ? text.slice(pos) : text.slice(pos, lt);
    if (stack.length > 0) stack[stack.length - 1].parts.push(decodeEntities(chunk));
    else if (chunk.trim() !== '') fail(pos, 'text outside the root element');
    if (lt < 0) break;
    if (text.startsWith('<!--', lt)) {
      const end = text.indexOf('-->', lt + 4);
      if (end < 0) fail(lt, 'unterminated comment');
      pos = end + 3;
    } else if (text.startsWith('<![CDATA[', lt)) {
      const end = text.indexOf(']]>', lt + 9);
      if (end < 0) fail(lt, 'unterminated CDATA section');
      if (stack.length === 0) fail(lt, 'CDATA outside the root element');
      stack[stack.length - 1].parts.push(text.slice(lt + 9, end));
      pos = end + 3;
    } else if (text.startsWith('<?', lt) || text.startsWith('<!', lt)) {
      const end = text.indexOf('>', lt);
      if (end < 0) fail(lt, 'unterminated declaration');
      pos = end + 1;
    } else {
      const end = text.indexOf('>', lt);
      if (end < 0) fail(lt, 'unterminated tag');
      const body = text.slice(lt + 1, end);
      if (body.startsWith('/')) {
        const name = body.slice(1).trim();
        const open = stack.pop();
        if (!open || open.el.name !== name) fail(lt, `closing tag </${name}> does not match <${open?.el.name ?? ''}>`);
        open!.el.text = open!.parts.join('').trim();
      } else {
        const selfClosing = body.endsWith('/');
        const name = (selfClosing ? body.slice(0, -1) : body).trim().split(/\s+/)[0];
        if (!/^[A-Za-z_][\w.:-]*$/.test(name)) fail(lt, `bad tag name '${name}'`);
        const el: XmlElement = { name, children: [], text: '' };
        if (stack.length > 0) stack[stack.length - 1].el.children.push(el);
        else if (root) fail(lt, 'more than one root element');
        else root = el;
        if (!selfClosing) stack.push({ el, parts: [] });
      }
      pos = end + 1;
    }
  }
  if (stack.length > 0) fail(text.length, `element <${stack[stack.length - 1].el.name}> is not closed`);
  if (!root) fail(0, 'no root element');
  return root!;
}

/** The children of `el` named `name`. */
export function childrenNamed(el: XmlElement, name: string): XmlElement[] {
  return el.children.filter((c) => c.name === name);
}

/** The first child named `name`, or undefined. */
export function childNamed(el: XmlElement, name: string): XmlElement | undefined {
  return el.children.find((c) => c.name === name);
}
