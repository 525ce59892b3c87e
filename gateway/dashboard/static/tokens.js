// #/tokens: the caller's API tokens (being built).

export async function render(root, params, ctx) {
  const heading = document.createElement("h1");
  heading.textContent = "API tokens";
  root.append(heading);
}
