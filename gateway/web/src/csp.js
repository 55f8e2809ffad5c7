// xterm.js adds <style> elements for its theme and cell sizes. The page's Content-Security-Policy
// allows style elements only with the nonce the gateway put into this page, so every <style>
// created here gets it. Scripts still come only from the page's own origin.

export function allowStyleElements() {
    const meta = document.querySelector('meta[name="labgate-style-nonce"]');
    const nonce = meta && meta.content;
    if (!nonce) return;
    meta.remove();
    const create = Document.prototype.createElement;
    Document.prototype.createElement = function (tagName, options) {
        const element = create.call(this, tagName, options);
        if (String(tagName).toLowerCase() === "style") element.nonce = nonce;
        return element;
    };
}
