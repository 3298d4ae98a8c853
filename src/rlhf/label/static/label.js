// Ranking by drag or keyboard (Alt+Up / Alt+Down on a focused response), Ctrl+Enter submits.
"use strict";

function updateOrder(list) {
  const items = [...list.querySelectorAll("li.response")];
  document.getElementById("order").value = items.map((li) => li.dataset.index).join(",");
  items.forEach((li, position) => { li.querySelector(".rank").textContent = "#" + (position + 1); });
}

function move(li, delta) {
  const list = li.parentElement;
  if (delta < 0 && li.previousElementSibling) list.insertBefore(li, li.previousElementSibling);
  if (delta > 0 && li.nextElementSibling) list.insertBefore(li.nextElementSibling, li);
  updateOrder(list);
}

function setUpRanking(list) {
  let dragged = null;
  list.addEventListener("click", (event) => {
    const button = event.target.closest("button.move");
    if (!button) return;
    move(button.closest("li"), Number(button.dataset.delta));
    button.focus();
  });
  list.addEventListener("keydown", (event) => {
    const li = event.target.closest("li.response");
    if (!li || !event.altKey || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
    event.preventDefault();
    move(li, event.key === "ArrowUp" ? -1 : 1);
    event.target.focus();
  });
  list.addEventListener("dragstart", (event) => {
    dragged = event.target.closest("li.response");
    dragged.classList.add("dragging");
    event.dataTransfer.effectAllowed = "move";
  });
  list.addEventListener("dragover", (event) => {
    const over = event.target.closest("li.response");
    if (!dragged || !over || over === dragged) return;
    event.preventDefault();
    const box = over.getBoundingClientRect();
    list.insertBefore(dragged, event.clientY < box.top + box.height / 2 ? over : over.nextElementSibling);
  });
  list.addEventListener("dragend", () => {
    if (dragged) dragged.classList.remove("dragging");
    dragged = null;
    updateOrder(list);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("ranking");
  if (list) setUpRanking(list);
  const form = document.getElementById("task-form");
  if (form) {
    form.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit(document.getElementById("submit"));
      }
    });
  }
});
