from django.urls import path

from apps.events.api import views

urlpatterns = [
    path("events", views.EventListView.as_view(), name="events"),
    path("events/<str:event_id>", views.EventDetailView.as_view(), name="event-detail"),
]
