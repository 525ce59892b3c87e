// #/usage: the usage figures (being built).

export async function render(root, params, ctx) {
  const heading = document.createElement("h1");
  heading.textContent = "Usage";
  root.append(heading);
}
