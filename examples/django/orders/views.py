from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from orders.tasks import send_confirmation


@require_POST
def confirm(request: HttpRequest, order_id: int) -> JsonResponse:
    """Queue the confirmation e-mail of an order."""
    result = send_confirmation.delay(order_id)
    return JsonResponse({"task_id": result.id}, status=202)
